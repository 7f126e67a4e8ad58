#!/usr/bin/env bash
# The README's Census-Income tables, as they were made: four `fusekit bench` processes side by
# side (baselines and fused models, two-task and three-task pools), one torch thread each,
# merged into one report. Usage: bash benchmarks/paper_tables.sh [OUT_DIR] [SEEDS]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/census}
seeds=${2:-3}
py=${PYTHON:-.venv/bin/python}
runs=$(mktemp -d "${TMPDIR:-/tmp}/fusekit-bench.XXXXXX")
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
baselines="sources,average,shared-bottom,single-mlp,mmoe,ml-mmoe,ple,aitm,cross-stitch,adatt-sp,adatt"
fused="emm,emm-paper,emm-all-levels,emm-finetune"
three=(--tasks income,never_married,education --models sample_models/census3)
"$py" -m fusekit bench census-income --seeds "$seeds" --methods "$baselines" --no-three-tasks -o "$runs/b2" > "$runs/b2.log" 2>&1 &
"$py" -m fusekit bench census-income "${three[@]}" --seeds "$seeds" --methods "$baselines" --no-three-tasks -o "$runs/b3" > "$runs/b3.log" 2>&1 &
"$py" -m fusekit bench census-income --seeds "$seeds" --methods "$fused,ablation" --no-three-tasks -o "$runs/e2" > "$runs/e2.log" 2>&1 &
"$py" -m fusekit bench census-income "${three[@]}" --seeds "$seeds" --methods "$fused" --no-three-tasks -o "$runs/e3" > "$runs/e3.log" 2>&1 &
wait
"$py" -m fusekit bench-merge "$runs/b2" "$runs/e2" "$runs/b3" "$runs/e3" -o "$out" --force
echo "logs in $runs"
