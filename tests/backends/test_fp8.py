"""8-bit weights (agent/backends/fp8.py) on the CPU: FP8 checkpoints in both published layouts are
saved from the tiny checkpoint, detected, loaded (dequantised: no FP8 kernels here), and answer
close to the original; the engine's FP8 plumbing (fused e4m3 q/k/v and gate/up, row views) gives
the same tokens as the dequantised weights; the planner counts FP8 weights."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from agent.backends import fp8  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    from agent.backends.tiny import tiny_checkpoint
    return tiny_checkpoint()


def test_quantisation_round_trips_within_e4m3_precision():
    w = torch.randn(300, 260) * 0.02
    for layout in ("block", "channel"):
        q, s = fp8.quantize_blockwise(w) if layout == "block" else fp8.quantize_channelwise(w)
        block = (fp8.BLOCK, fp8.BLOCK) if layout == "block" else (1, w.shape[1])
        assert q.dtype == torch.float8_e4m3fn
        assert s.shape == ((3, 3) if layout == "block" else (300, 1))
        back = fp8.dequantize(q, s, block, torch.float32)
        assert float((back - w).norm() / w.norm()) < 0.04  # 3 mantissa bits


def test_long_inputs_widen_the_weight_a_slice_of_rows_at_a_time(monkeypatch):
    w = torch.randn(700, 260) * 0.02
    x = torch.randn(3, 90, 260)  # more rows than the kernel takes: the widening path
    for q, s, block in ((*fp8.quantize_blockwise(w), (fp8.BLOCK, fp8.BLOCK)), (*fp8.quantize_channelwise(w), (1, 260))):
        fw = fp8.FP8Weight(q, s, block, torch.float32)
        whole = x @ fw.dequantized().t()
        monkeypatch.setattr(fp8, "WIDEN_ROWS", 256)  # 700 rows: three slices (block-aligned)
        assert torch.allclose(fp8.linear(x, fw), whole, atol=1e-6)
        monkeypatch.setattr(fp8, "WIDEN_ROWS", 2048)
    # The 2B's down projection (2048 x 6144): WIDEN_BYTES cuts it into slices of 640 rows.
    q, s = fp8.quantize_blockwise(torch.randn(2048, 6144) * 0.02)
    fw = fp8.FP8Weight(q, s, (fp8.BLOCK, fp8.BLOCK), torch.float32)
    x = torch.randn(70, 6144)
    assert torch.allclose(fp8.linear(x, fw), x @ fw.dequantized().t(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["block", "channel"])
def test_fp8_checkpoints_load_and_answer_like_the_original(tiny, tmp_path, layout):
    from safetensors import safe_open
    from transformers import Qwen3VLForConditionalGeneration

    dst = tmp_path / layout
    fp8.save_fp8_checkpoint(tiny, dst, layout)
    assert fp8.checkpoint_layout(dst) == layout and fp8.checkpoint_layout(tiny) is None
    with safe_open(str(dst / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        name = next(k for k in keys if k.endswith("layers.0.self_attn.q_proj.weight"))
        assert f.get_tensor(name).dtype == torch.float8_e4m3fn
        assert (name[:-6] + ("weight_scale_inv" if layout == "block" else "weight_scale")) in keys
    ref = Qwen3VLForConditionalGeneration.from_pretrained(tiny).eval()
    model = fp8.load_fp8(dst, torch.float32, "cpu")
    assert model.fp8_layout == layout and not model.fp8_kernels  # the CPU has no FP8 kernels
    ids = torch.randint(0, 900, (1, 40), generator=torch.Generator().manual_seed(0))
    errs = fp8.layer_errors(ref, model, ids)
    assert all(e["rel_err"] < 0.1 for e in errs[:-1]), errs
    assert errs[-1]["rel_err"] < 0.1 and errs[-1]["top1_agree"] >= 0.9, errs[-1]
    # As on a card with FP8 kernels: the e4m3 weights stay (biases of the vision tower included).
    kept = fp8.load_fp8(dst, torch.float32, "cpu", kernels=True)
    assert kept.fp8_kernels and kept.model.visual.blocks[0].attn.qkv.weight is None
    pv = torch.randn(16, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(2))
    grid = torch.tensor([[1, 4, 4]])
    im_tok = ref.config.image_token_id
    ids2 = torch.cat([ids[:, :10], torch.full((1, 4), im_tok), ids[:, 10:]], 1)
    errs = fp8.layer_errors(model, kept, ids2, pv, grid)  # same weights, dequantised once or per call
    assert errs[-1]["rel_err"] < 1e-4, errs[-1]


@pytest.mark.slow
def test_the_backend_loads_an_fp8_folder(tiny, tmp_path):
    from agent.backends.transformers import TransformersBackend
    dst = tmp_path / "fp8"
    fp8.save_fp8_checkpoint(tiny, dst, "block")
    backend = TransformersBackend(dst, engine=False, constrained=False, max_new_tokens=4)
    assert getattr(backend.model, "fp8_layout", None) == "block"
    from PIL import Image
    msgs = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (64, 64), "white")},
                                         {"type": "text", "text": "hi"}]}]
    assert isinstance(backend.generate(msgs), str)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["block", "channel"])
def test_the_engine_runs_fused_fp8_weights_like_the_dequantised_ones(tiny, layout):
    """kernels=True keeps e4m3 weights in the engine (fused, viewed per module); on the CPU each
    product widens them, so the tokens must equal those of the same weights dequantised at load."""
    from transformers import Qwen3VLForConditionalGeneration

    from agent.backends.engine import Engine

    def load(kernels):
        m = Qwen3VLForConditionalGeneration.from_pretrained(tiny).eval()
        fp8.quantize_model(m, layout, kernels=kernels, block=16)  # the tiny model's rows are not 128-aligned
        return m
    kept, widened = load(True), load(False)
    eng = Engine(kept, max_context=512)
    assert eng.fp8 and isinstance(eng.layers[0]["qkv"], fp8.FP8Weight)
    assert kept.model.language_model.layers[0].self_attn.k_proj.weight is None  # no bf16 copy kept
    ids = torch.randint(0, 900, (60,), generator=torch.Generator().manual_seed(1)).tolist()
    a = eng.generate(ids, [], max_new_tokens=8).tokens
    b = Engine(widened, max_context=512).generate(ids, [], max_new_tokens=8).tokens
    assert a == b


def test_budget_plans_fp8_weights():
    from agent.backends.budget import QWEN3_VL_2B_PARAMS, _shapes_2b, plan
    cfg = _shapes_2b()
    lin = fp8.linear_params(cfg)
    assert 1.7e9 < lin < 1.9e9  # the 2B's language and vision linears (the tied embedding stays bf16)
    wb = fp8.fp8_weight_bytes(cfg, QWEN3_VL_2B_PARAMS)
    bf16, f8 = plan(cfg, 24 * 2 ** 30), plan(cfg, 24 * 2 ** 30, weight_bytes=wb)
    assert f8.weights_gib < 0.6 * bf16.weights_gib
    assert f8.token_budget > bf16.token_budget


needs_fp8_gpu = pytest.mark.skipif(not (torch.cuda.is_available() and fp8.fp8_supported(torch.device("cuda"))),
                                   reason="FP8 GEMMs need a CUDA card of compute capability >= 8.9 and Triton")


@needs_fp8_gpu
def test_activations_are_quantised_one_scale_per_row_group():
    x = torch.randn(70, 512, device="cuda", dtype=torch.bfloat16) * torch.logspace(-2, 1, 70, device="cuda")[:, None]
    q, s = fp8.quantize_rows(x, 128, pad_to=4)
    assert q.shape == (72, 512) and s.shape == (72, 4) and s.stride() == (1, 72)  # column-major, rows in fours
    want = x.float().view(70, 4, 128).abs().amax(-1) / fp8.E4M3_MAX
    assert torch.allclose(s[:70], want, rtol=1e-6)
    back = (q[:70].float().view(70, 4, 128) * s[:70, :, None]).view(70, 512)
    assert float((back - x.float()).norm() / x.float().norm()) < 0.04
    assert not q[70:].float().any()  # the padding rows are zero


@needs_fp8_gpu
@pytest.mark.parametrize("layout", ["block", "channel"])
def test_long_inputs_run_fp8_gemms_close_to_the_fp8_weights_product(layout):
    w = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16) * 0.02
    q, s = fp8.quantize_blockwise(w) if layout == "block" else fp8.quantize_channelwise(w)
    block = (fp8.BLOCK, fp8.BLOCK) if layout == "block" else (1, 1024)
    x = torch.randn(2, 150, 1024, device="cuda", dtype=torch.bfloat16)  # longer than the decode kernel's rows
    exact = x @ fp8.FP8Weight(q, s, block, torch.bfloat16).dequantized().t()
    got = fp8.linear(x, fp8.FP8Weight(q, s, block, torch.bfloat16, gemm=True))
    widened = fp8.linear(x, fp8.FP8Weight(q, s, block, torch.bfloat16, gemm=False))
    assert got.shape == exact.shape
    assert float((widened.float() - exact.float()).norm() / exact.float().norm()) < 0.01
    err = float((got.float() - exact.float()).norm() / exact.float().norm())
    assert 0 < err < 0.05  # the activations' own e4m3 rounding, nothing more: the GEMM ran on e4m3 inputs
    assert not fp8._gemm_state  # and it was not refused
