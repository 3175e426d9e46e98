#!/bin/bash
# The runs behind benchmarks/results/h100_*.json (one device call, about 5 minutes on an H100).
# A random-weight 2B checkpoint is saved to local disk first, so the cold start loads weights
# from disk like a real install; the first compiled run fills the inductor cache, the later ones use it.
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1; else export PYTHONPATH=$PWD; fi
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
VL='from agent.cli import main; main()'
b() { name=$1; shift; echo "== $name: vlagent bench $*" >> $OUT/runs.log
      timeout 200 python3 -c "$VL" bench "$@" --json $OUT/$name.json >> $OUT/runs.log 2>&1; rc=$?
      echo "== $name rc=$rc"; python3 benchmarks/summary.py $OUT/$name.json; }
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/backends/test_engine.py > $OUT/pytest_engine_gpu.log 2>&1; echo "== engine tests on the GPU rc=$?"; tail -3 $OUT/pytest_engine_gpu.log
timeout 120 python3 benchmarks/save_random_2b.py /tmp/r2b >> $OUT/runs.log 2>&1 || tail -5 $OUT/runs.log
b h100_compile_coldcache --model /tmp/r2b --steps 12 --compile --no-grammar
b h100_compile --model /tmp/r2b --steps 12 --compile --peak-context 32768
b h100_compile_evict4 --model /tmp/r2b --steps 12 --compile --evict 4 --no-grammar
b h100_eager --model /tmp/r2b --steps 12 --peak-context 32768
