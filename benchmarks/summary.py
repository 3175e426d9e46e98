"""One line per bench JSON: python benchmarks/summary.py FILE.json..."""
import json
import sys

KEYS = ["step_ms_p50", "step_ms_p95", "ttft_ms", "preprocess_ms", "vision_ms", "prefill_ms", "decode_ms",
        "decode_tok_s", "cold_start_s", "build_s", "peak_gib", "predicted_peak_gib", "peak_context_gib",
        "grammar_overhead_pct"]
for path in sys.argv[1:]:
    try:
        r = json.load(open(path))
    except (OSError, ValueError) as e:
        print(path, "unreadable:", e)
        continue
    print(path.split("/")[-1], " ".join(f"{k}={r[k]:.1f}" for k in KEYS if isinstance(r.get(k), (int, float))))
