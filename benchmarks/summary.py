"""One line per bench JSON: python benchmarks/summary.py FILE.json..."""
import json
import sys

KEYS = ["step_ms_p50", "step_ms_p95", "ttft_ms", "preprocess_ms", "vision_ms", "prefill_ms", "decode_ms",
        "decode_tok_s", "cold_start_s", "build_s", "peak_gib", "predicted_peak_gib", "peak_context_gib",
        "grammar_overhead_pct",
        # product mode (benchmarks/product_bench.py)
        "steady_step_ms_p50", "steady_step_ms_p95", "click_step_ms_p50", "click_step_ms_p95", "prompt_ms",
        "encode_ms", "decode_steps", "new_tokens", "grammar_pct_of_decode", "decode_tok_s_at_context",
        "planned_peak_gib", "first_step_ms", "load_s", "process_to_load_s", "generate_defaults_step_ms_p50",
        "generate_static_compile_step_ms_p50", "generate_static_compile_first_call_s"]
for path in sys.argv[1:]:
    try:
        r = json.load(open(path))
    except (OSError, ValueError) as e:
        print(path, "unreadable:", e)
        continue
    print(path.split("/")[-1], " ".join(f"{k}={r[k]:.1f}" for k in KEYS if isinstance(r.get(k), (int, float))))
