"""Save the random-weight 2B model as a local checkpoint with Qwen's real vocabulary, so that
`vlagent run/bench --model DIR` takes the path real weights take (see
benchmarks/product_bench.py's save_random_2b).

Usage: python benchmarks/save_random_2b.py DIR [--device cpu] [--small]
--small: the tiny checkpoint's layer sizes with the real vocabulary and ids (CPU profiling of the
product path: real tokenizer, grammar and prompt lengths, small matrices)."""
import argparse

from product_bench import save_random_2b

ap = argparse.ArgumentParser()
ap.add_argument("folder")
ap.add_argument("--device", default="cuda")
ap.add_argument("--small", action="store_true")
args = ap.parse_args()
save_random_2b(args.folder, args.device, args.small)
print("saved", args.folder)
