#!/bin/bash
# One device call: install carried wheels, check the engine, run the bench. Usage: bash benchmarks/gpu_run.sh [check|bench|all]
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1; else export PYTHONPATH=$PWD; fi
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, xgrammar; print('torch', torch.__version__, 'transformers', transformers.__version__, 'xgrammar ok')"
if [ $what = check ] || [ $what = all ]; then
  timeout 300 python3 benchmarks/gpu_check.py $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log | grep -v Warning
fi
if [ $what = bench ] || [ $what = all ]; then
  timeout 240 python3 -c "from agent.cli import main; main()" bench --random-weights --steps 12 --peak-context 32768 --json $OUT/bench.json 2>&1 | tee $OUT/bench.log | tail -25
fi
