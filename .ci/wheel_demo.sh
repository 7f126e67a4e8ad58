#!/usr/bin/env bash
# A user's install: build a wheel from this checkout, install it into a fresh virtual environment
# (torch pinned first, as the README says), and run `fusekit demo` from an unrelated folder.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
py="${PY:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
builder="$repo/.venv/bin/python"; [ -x "$builder" ] || builder="$py"
"$builder" -m pip wheel -q --no-deps -w "$work/dist" "$repo"
"$py" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q $torch_spec
"$work/venv/bin/python" -m pip install -q "$work"/dist/fusekit-*.whl
mkdir "$work/elsewhere"
cd "$work/elsewhere"
"$work/venv/bin/fusekit" --version
"$work/venv/bin/fusekit" demo --epochs 2 --quiet -o out
test -f out/fused/fused.onnx
"$work/venv/bin/python" -m fusekit inspect "$("$work/venv/bin/python" -c 'import fusekit.sample_models as s; print(s.ROOT / "census2" / "income_a.onnx")')" > /dev/null
echo "wheel demo: ok"
