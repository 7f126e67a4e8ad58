# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv when it is missing and install fusekit into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned first so that pip does not pull a multi-GB CUDA build; override on GPU machines.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test wheel-check bench-speed bench-paper bench-paired bench-ideas bench-variants bench-pools clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m fusekit demo --force

# Two pytest workers, each taking whole test files (module fixtures are built once); on a machine
# with more cores raise it: `make test TEST_WORKERS=8`. TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# A user's install: wheel -> fresh venv -> `fusekit demo` from another folder.
wheel-check: $(STAMP)
	bash .ci/wheel_demo.sh

# Speed figures of the README (each script prints ratios measured in one run).
bench-speed: $(STAMP)
	$(BIN)/python benchmarks/bench_decompose.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_fuse.py

# The paper's tables (about two hours on 2 cores): writes benchmarks/results/census/.
bench-paper: $(STAMP)
	bash benchmarks/paper_tables.sh benchmarks/results/census 3

# The paired Census-Income tables of the README (5 splits x 3 seeds; hours on 2 cores, resumable:
# run the same command again after a stop): benchmarks/results/paired/.
bench-paired: $(STAMP)
	$(BIN)/python -m fusekit bench census-income --tasks income,never_married --no-three-tasks --splits 5 --seeds 3 \
		--methods sources,average,adatt,emm,emm-finetune --threads 1 -o benchmarks/results/paired/census2 & \
	$(BIN)/python -m fusekit bench census-income --tasks income,never_married,education --no-three-tasks --splits 5 \
		--seeds 3 --methods sources,average,mmoe,emm,emm-finetune --threads 1 -o benchmarks/results/paired/census3; wait

# The README's "closing the gap" variants against the default (resumable, as bench-paired).
bench-ideas: $(STAMP)
	$(BIN)/python -m fusekit bench census-income --tasks income,never_married --no-three-tasks --splits 5 --seeds 3 \
		--methods sources,average,adatt,emm,emm-finetune,emm-all-rows,emm-finetune-all-rows --threads 1 \
		-o benchmarks/results/paired/ideas/census2 & \
	$(BIN)/python -m fusekit bench census-income --tasks income,never_married,education --no-three-tasks --splits 5 \
		--seeds 1 --methods sources,average,mmoe,emm,emm-finetune,emm-all-rows,emm-finetune-all-rows --threads 1 \
		-o benchmarks/results/paired/ideas/census3; wait

# The fusion-option study of the README (about 40 minutes on 2 cores).
bench-variants: $(STAMP)
	$(BIN)/python benchmarks/fusion_variants.py --pool census2 --variants default,fuse-at-all,finetune-heads,finetune-last,finetune-all,finetune-all-lr0.05,finetune-all-lr0.3,finetune-all-lr1,finetune-all-slow,all-rows,finetune-all-all-rows & \
	$(BIN)/python benchmarks/fusion_variants.py --pool census3 --variants default,top-k-2,finetune-all,finetune-all-top-k-2; wait

# The new pools (task kinds, foreign models; about 15 minutes on 2 busy cores): benchmarks/results/pools/.
bench-pools: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/bench_pools.py

clean:
	rm -rf $(VENV) build *.egg-info
