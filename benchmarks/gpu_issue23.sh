#!/bin/bash
# One device call for issue 23's figures (run from the repo root on the GPU machine; wheels in .whl/
# or ../.whl/). Stages, in the order given:
#   gemm       benchmarks/gpu_fp8_gemm.py: FP8 GEMMs for long inputs against the widened weight and bf16
#   fused      benchmarks/gpu_fused_decode.py: the fused decode layer's GEMV configurations, 28 layers at 10K fused vs eager
#   lafused    la with the fused decode on (VLAGENT_FUSED_DECODE=1; measured before it was the default), decode at 10K
#   lanofuse   la with the fused decode off (VLAGENT_FUSED_DECODE=0), decode at 10K
#   fusedtests tests/backends/test_decode_kernels.py on the GPU (the compiled kernels)
#   fp8labest  fp8la (decode at 10K, peak at 32K) with the GEMV launches `fused` found best on this machine
#              (/tmp/best_gemv.json; committed as decode_kernels.GEMV_CONFIG afterwards)
#   fp8labestnopdl the same without programmatic dependent launch (VLAGENT_PDL=0)
#   labest     la (bf16) with those launches
#   fp8lanofuse fp8la with the fused decode off (VLAGENT_FUSED_DECODE=0): the eager decode step, same call
#   probe      benchmarks/gpu_fp8_probe.py: the FP8 kernel against bf16 on the 2B's decode shapes
#   imports    python -X importtime of what `vlagent run` imports before the model loads
#   base       vlagent bench (product path, mixed replies, eager) with transformers' baselines
#   shift      the same without the baselines, --kv-shift (KV moved after an eviction; off by default)
#   noshift    ... with the shift off (re-prefill after an eviction: the default)
#   fp8        ... with FP8 weights (the bf16 checkpoint quantised at load), decode at 10K, peak at 32K
#   fp8ckpt    FP8 checkpoints in both layouts saved, loaded, layer errors against bf16
#   kvcheck    benchmarks/gpu_kv_shift.py: shifted KV against a fresh prefill on the 2B
#   serve      benchmarks/bench_serve.py on the GPU (1 and 8 agents, native click replies)
#   nola/la    with the desktop's time between steps (DESKTOP_MS, default 249: the median measured on real
#              apps), the lookahead off / on (agent/run/lookahead.py); la110: the shortest desktop time seen
#   labase     la with transformers' baselines and decode at 10K
#   coldold    the cold start of the code before this round (a copy in .old/, made with git archive 3ab5644), 3 fresh processes
#   fp8lawiden fp8la with the weights widened to bf16 for long inputs (VLAGENT_FP8_GEMM=0), no 32K peak
#   fp8la      la with FP8 weights (quantised at load), decode at 10K, peak at 32K
#   gputests   the engine's and the lookahead's tests on the GPU
#   coldprof   the native load's imports (python -X importtime) and its main thread's profile (cProfile)
#   memtrace   benchmarks/gpu_memory_trace.py: the blocks alive at the FP8 32K run's transient peaks
#   mem        benchmarks/gpu_memory.py: memory by part at 32K context with FP8 weights, per prefill chunk
#   native     benchmarks/gpu_native_check.py: the native load (qwen3vl_model.py) against transformers' on the 2B
#   coldcmp    benchmarks/cold_start.py, the native load and transformers' in turn, 3 fresh processes each
#   lahf/memhf la / mem with the load through transformers' modeling code (VLAGENT_NATIVE=0): the baselines
#   cold       benchmarks/cold_start.py: process start -> load phases -> first action, 3 fresh processes;
#              the modeling import plain and without sklearn; what all decode graphs at load used to add
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
W=.whl; [ -d $W ] || W=../.whl
if [ -d $W ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $W/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1; else export PYTHONPATH=$PWD; fi
export VLAGENT_CACHE=${VLAGENT_CACHE:-/tmp/vlc}; mkdir -p $VLAGENT_CACHE
# The lent machine sets PYTHONDONTWRITEBYTECODE=1: every process would compile its Python source again
# (~2.5 s of a cold start's imports there). An installed machine has its bytecode (pip compiles at
# install), so the cold starts are measured with a bytecode cache, written by pyc() before them.
unset PYTHONDONTWRITEBYTECODE; export PYTHONPYCACHEPREFIX=/tmp/pyc
pyc() { python3 -c "import torch, xgrammar, agent.cli, agent.backends.engine, agent.backends.qwen3vl_model, agent.backends.qwen3vl_processor, agent.backends.grammar; from transformers import Qwen3VLForConditionalGeneration, AutoProcessor, AutoTokenizer" > /dev/null 2>&1; }
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, xgrammar; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cc', torch.cuda.get_device_capability())"
VL='from agent.cli import main; main()'
# The same, with the GEMV launches a `fused` stage of this machine found best (the product runs measure what gets committed)
VLBEST='import json; from agent.backends import decode_kernels as dk; c = json.load(open("/tmp/best_gemv.json")); dk.HEAD_CONFIG = tuple(c.pop("head", dk.HEAD_CONFIG)); dk.ATTENTION_CONFIG = tuple(c.pop("attention", dk.ATTENTION_CONFIG)); dk.GEMV_CONFIG.update({k: tuple(v) for k, v in c.items()}); print("launches", dk.GEMV_CONFIG, dk.HEAD_CONFIG, dk.ATTENTION_CONFIG); from agent.cli import main; main()'
M=/tmp/r2b
ckpt() { [ -f $M/config.json ] || { t=$(date +%s); timeout 200 python3 benchmarks/save_random_2b.py $M > /tmp/save.log 2>&1 || tail -5 /tmp/save.log; echo "saved in $(( $(date +%s) - t )) s"; }
         cat $M/*.safetensors > /dev/null; }
b() { name=$1; shift; echo "== $name: vlagent bench $*"
      timeout ${BT:-240} python3 -c "$VL" bench "$@" --json $OUT/$name.json > /tmp/$name.log 2>&1; echo "rc=$?"
      python3 benchmarks/summary.py $OUT/$name.json 2>/dev/null || tail -8 /tmp/$name.log; grep -i "warn\|error" /tmp/$name.log | head -3
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r.get('load_timings')); print('steps (n, ms, reused, shifted, encoded, vision, prefill, decode)', [(s['step'], round(s['step_ms'],1), s.get('reused_tokens'), s.get('shifted_tokens'), s.get('images_encoded'), round(s.get('vision_ms') or 0,1), round(s.get('prefill_ms') or 0,1), round(s.get('decode_ms') or 0,1)) for s in r['steps_detail']])" $OUT/$name.json 2>/dev/null; }
for what in "$@"; do case $what in
  gemm) timeout 200 python3 benchmarks/gpu_fp8_gemm.py $OUT/fp8_gemm.json 2>&1 | tail -60 ;;
  fp8tests) timeout 200 python3 -m pytest -q -p no:cacheprovider tests/backends/test_fp8.py 2>&1 | tail -4 ;;
  fused) timeout 240 python3 benchmarks/gpu_fused_decode.py $OUT/fused_decode.json 2>&1 | tail -12 ;;
  fp8labest) ckpt; VL0=$VL; VL=$VLBEST; b fp8_lookahead_best --model $M --steps 12 --no-baselines --fp8 block --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240 --peak-context 32768; VL=$VL0 ;;
  fp8labestnopdl) ckpt; VL0=$VL; VL=$VLBEST; export VLAGENT_PDL=0; b fp8_lookahead_best_nopdl --model $M --steps 12 --no-baselines --fp8 block --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240; unset VLAGENT_PDL; VL=$VL0 ;;
  labest) ckpt; VL0=$VL; VL=$VLBEST; b lookahead_best --model $M --steps 12 --no-baselines --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240; VL=$VL0 ;;
  fusedtests) timeout 200 python3 -m pytest -q -p no:cacheprovider tests/backends/test_decode_kernels.py 2>&1 | tail -4 ;;
  lafused) ckpt; export VLAGENT_FUSED_DECODE=1; b lookahead_fused --model $M --steps 12 --no-baselines --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240; unset VLAGENT_FUSED_DECODE ;;
  lanofuse) ckpt; export VLAGENT_FUSED_DECODE=0; b lookahead_nofuse --model $M --steps 12 --no-baselines --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240; unset VLAGENT_FUSED_DECODE ;;
  fp8lanofuse) ckpt; export VLAGENT_FUSED_DECODE=0; b fp8_lookahead_nofuse --model $M --steps 12 --no-baselines --fp8 block --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240 --peak-context 32768; unset VLAGENT_FUSED_DECODE ;;
  probe) timeout 150 python3 benchmarks/gpu_fp8_probe.py $OUT/fp8_probe.json 2>&1 | tail -25 ;;
  imports) ckpt; python3 -X importtime -c "import agent.cli, agent.backends.transformers, transformers; from transformers import Qwen3VLForConditionalGeneration" 2> /tmp/imp.log; sort -t'|' -k2 -n -r /tmp/imp.log | head -25 > $OUT/importtime_top.txt; head -25 $OUT/importtime_top.txt ;;
  base) ckpt; BT=300 b base --model $M --steps 12 --decode-context 10240 ;;
  shift) ckpt; b shift --model $M --steps 12 --no-baselines --kv-shift --decode-context 10240 --peak-context 32768 ;;
  noshift) ckpt; b noshift --model $M --steps 12 --no-baselines --no-kv-shift ;;
  fp8) ckpt; b fp8 --model $M --steps 12 --no-baselines --kv-shift --fp8 block --decode-context 10240 --peak-context 32768 ;;
  fp8save) ckpt; [ -f /tmp/r2b_fp8_block/config.json ] || { t=$(date +%s); python3 -c "from agent.backends.fp8 import save_fp8_checkpoint as s; s('$M', '/tmp/r2b_fp8_block', 'block')"; echo "fp8 checkpoint saved in $(( $(date +%s) - t )) s"; }
           cat /tmp/r2b_fp8_block/*.safetensors > /dev/null ;;
  fp8load) b fp8_ckpt --model /tmp/r2b_fp8_block --steps 12 --no-baselines --kv-shift --decode-context 10240 --peak-context 32768 ;;
  fp8ckpt) ckpt; timeout 200 python3 benchmarks/gpu_fp8_check.py $M $OUT/fp8_layers.json ${LAYOUTS:-block,channel} 2>&1 | tail -20 ;;
  kvcheck) ckpt; timeout 150 python3 benchmarks/gpu_kv_shift.py $M $OUT/kv_shift_2b.json 2>&1 | tail -12 ;;
  kvquick) timeout 150 python3 benchmarks/gpu_kv_shift.py random $OUT/kv_shift_2b.json 2>&1 | tail -40 ;;
  nola) ckpt; b nola --model $M --steps 12 --no-baselines --desktop-ms ${DESKTOP_MS:-249} --no-lookahead ;;
  la) ckpt; b lookahead --model $M --steps 12 --no-baselines --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240 ;;
  la110) ckpt; b lookahead_110 --model $M --steps 12 --no-baselines --desktop-ms 110 ;;
  labase) ckpt; BT=400 b lookahead_base --model $M --steps 12 --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240 ;;
  fp8lawiden) ckpt; export VLAGENT_FP8_GEMM=0; b fp8_lookahead_widen --model $M --steps 12 --no-baselines --fp8 block --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240; unset VLAGENT_FP8_GEMM ;;
  fp8la) ckpt; b fp8_lookahead --model $M --steps 12 --no-baselines --fp8 block --desktop-ms ${DESKTOP_MS:-249} --decode-context 10240 --peak-context 32768 ;;
  gputests) timeout 240 python3 -m pytest -q -p no:cacheprovider tests/backends/test_engine.py tests/backends/test_fp8.py tests/backends/test_decode_kernels.py tests/backends/test_native_qwen3vl.py tests/run/test_lookahead.py -k "not real_app" 2>&1 | tail -6 ;;
  coldprof) ckpt; python3 -X importtime -c "import sys; sys.argv=['x']; from agent.backends import load_backend; load_backend('$M')" 2> /tmp/impn.log > /dev/null
           sort -t'|' -k2 -n -r /tmp/impn.log | head -40 > $OUT/importtime_native.txt; head -25 $OUT/importtime_native.txt
           python3 -c "import cProfile, pstats; from agent.backends import load_backend; cProfile.run('load_backend(\"$M\")', '/tmp/load.prof'); pstats.Stats('/tmp/load.prof').sort_stats('cumulative').print_stats(45)" 2>&1 | grep -v "^Loading" > $OUT/load_profile.txt; grep -A60 "ncalls" $OUT/load_profile.txt | cut -c1-160 | head -60 ;;
  memtrace) ckpt; timeout 200 python3 benchmarks/gpu_memory_trace.py $M $OUT/memory_trace.json block 2>&1 | grep -v "^Loading" | tail -60 ;;
  mem) ckpt; timeout 200 python3 benchmarks/gpu_memory.py $M $OUT/memory_fp8.json block 2>&1 | tail -30 ;;
  native) ckpt; timeout 300 python3 benchmarks/gpu_native_check.py $M $OUT/native_check.json 2>&1 | grep -v "^Loading" | tail -8 ;;
  coldcmp) ckpt; pyc; timeout 400 python3 benchmarks/cold_start.py $OUT/cold_start.json --model $M --runs ${RUNS:-3} --steps 4 2>&1 | grep -v "^Loading" | tail -10 ;;
  lahf) ckpt; export VLAGENT_NATIVE=0; b lookahead_hf --model $M --steps 12 --no-baselines --desktop-ms ${DESKTOP_MS:-249}; unset VLAGENT_NATIVE ;;
  memhf) ckpt; VLAGENT_NATIVE=0 timeout 200 python3 benchmarks/gpu_memory.py $M $OUT/memory_fp8_hf.json block 2>&1 | tail -12 ;;
  cold) ckpt; pyc; timeout 500 python3 benchmarks/cold_start.py $OUT/cold_start.json --model $M --runs ${RUNS:-3} --steps 4 2>&1 | grep -v "^Loading" | tail -12 ;;
  coldold) ckpt; pyc; for i in 1 2 3; do (cd ${OLD:-.old} && timeout 200 python3 -c "$VL" bench --model $M --steps 4 --no-baselines --json $OUT/coldold_$i.json > /tmp/coldold.log 2>&1;
           python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('old code: first action at %.2f s' % r['cold_start_s'], r['load_timings'], 'process_to_load %.2f' % r['process_to_load_s'])" $OUT/coldold_$i.json || tail -3 /tmp/coldold.log); done ;;
  serve) ckpt; timeout 400 python3 benchmarks/bench_serve.py $OUT/serve.json --checkpoint $M --agents 1,8 --steps 6 --think-from benchmarks/results/desktop_time.json 2>&1 | tail -12 ;;
esac; done
