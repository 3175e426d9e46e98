#!/bin/bash
# One device call: the product-path bench (vlagent bench, default mode) on a random-weight 2B
# checkpoint with Qwen's real vocabulary, eager and compiled, and a decode-step profile.
# Usage (repo root, on the GPU machine; wheels in .whl-bench/): bash benchmarks/gpu_product.sh [eager] [compile] [profile]
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
if [ -d .whl-bench ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl-bench/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1; else export PYTHONPATH=$PWD; fi
export VLAGENT_CACHE=${VLAGENT_CACHE:-/tmp/vlc}; mkdir -p $VLAGENT_CACHE
[ -d .whl-bench/qwen-vocab-v1 ] && cp -r .whl-bench/qwen-vocab-v1 $VLAGENT_CACHE/
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
VL='from agent.cli import main; main()'
M=/tmp/r2b
[ -f $M/config.json ] || { t=$(date +%s); timeout 200 python3 benchmarks/save_random_2b.py $M > /tmp/save.log 2>&1 || tail -5 /tmp/save.log; echo "saved in $(( $(date +%s) - t )) s"; }
cat $M/*.safetensors > /dev/null  # weights in the page cache, as the cold-start target says
b() { name=$1; shift; echo "== $name: vlagent bench $*"
      timeout 280 python3 -c "$VL" bench "$@" --json $OUT/$name.json > /tmp/$name.log 2>&1; echo "rc=$?"
      python3 benchmarks/summary.py $OUT/$name.json 2>/dev/null || tail -5 /tmp/$name.log
      python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('load_timings'))" $OUT/$name.json 2>/dev/null; }
for what in "$@"; do case $what in
  eager) b product_eager --model $M --steps 12 --decode-context 10240 --peak-context 32768 ;;
  click) b product_click_eager --model $M --steps 12 --reply click --no-baselines --decode-context 10240 ;;
  click-warm4k) VLAGENT_WARM_TOKENS=4096 b product_click_eager_warm4k --model $M --steps 12 --reply click --no-baselines ;;
  click-flash) VLAGENT_SDPA=flash b product_click_eager_flash --model $M --steps 12 --reply click --no-baselines ;;
  compile) VLAGENT_COMPILE=1 b product_compile --model $M --steps 12 --no-baselines --decode-context 10240 ;;
  compile-click) VLAGENT_COMPILE=1 b product_click_compile --model $M --steps 12 --reply click --no-baselines --decode-context 10240 --peak-context 32768 ;;
  profile) timeout 200 python3 benchmarks/gpu_profile.py $M > /tmp/profile.log 2>&1; echo "profile rc=$?"; tail -3 /tmp/profile.log ;;
  profile-compile) timeout 200 python3 benchmarks/gpu_profile.py $M compile > /tmp/profile_c.log 2>&1; echo "profile rc=$?"; tail -3 /tmp/profile_c.log ;;
esac; done
