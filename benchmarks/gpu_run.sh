#!/bin/bash
# One device call: install carried wheels, check the engine, run the bench.
# Usage (repo root, on the GPU machine): bash benchmarks/gpu_run.sh [check] [bench] [bench-compile]
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1; else export PYTHONPATH=$PWD; fi
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, xgrammar, pydantic; print('torch', torch.__version__, 'transformers', transformers.__version__, 'xgrammar ok')"
VL='from agent.cli import main; main()'
for what in "$@"; do case $what in
  check) timeout 300 python3 benchmarks/gpu_check.py $OUT/gpu_check.json 2>&1 | grep -v Warning | tee $OUT/gpu_check.log | tail -40 ;;
  bench) timeout 200 python3 -c "$VL" bench --random-weights --steps 12 --peak-context 32768 --json $OUT/bench.json 2>&1 | tee $OUT/bench.log | tail -20 ;;
  bench-compile)  # twice: the second process finds the compile artefacts on disk
    timeout 200 python3 -c "$VL" bench --random-weights --steps 12 --compile --no-grammar --json $OUT/bench_compile_cold.json 2>&1 | tee $OUT/bench_compile_cold.log | tail -16
    timeout 200 python3 -c "$VL" bench --random-weights --steps 12 --compile --peak-context 32768 --json $OUT/bench_compile.json 2>&1 | tee $OUT/bench_compile.log | tail -20 ;;
esac; done
