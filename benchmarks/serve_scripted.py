"""`vlagent serve` whose replies follow a script of native clicks with coordinates (for
benchmarks/bench_serve.py): random weights, left to the grammar, answer the shortest reply it
allows (`left_click` with no coordinate, ~1.3 decode passes), which is not what a model does.
As in benchmarks/product_bench.py, the real grammar matcher runs and, where it leaves a choice, the
mask holds only the next token of the scripted reply: every token is decoded or jumped over as for
a model that chose it (a click is ~8 model choices and its forced text).

Usage: the arguments of `vlagent serve` (bench_serve.py starts it in place of `vlagent serve`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from product_bench import CLICKS, ScriptedConstrainer  # noqa: E402

from agent.backends import transformers as tb  # noqa: E402

_init = tb.TransformersBackend.__init__


def _scripted_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if self.constrainer is not None:
        stop = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.constrainer = ScriptedConstrainer(self.constrainer, self.tokenizer, CLICKS, stop)


tb.TransformersBackend.__init__ = _scripted_init

if __name__ == "__main__":
    sys.argv[0] = "vlagent"
    from agent.cli import main
    main()
