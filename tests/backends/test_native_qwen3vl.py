"""The engine's native Qwen3-VL load (agent/backends/qwen3vl_model.py, qwen3vl_processor.py) against
transformers' own code on the tiny checkpoint, on the CPU in float32: the same prompt text and token
ids, the same pixel patches, the same vision tower outputs and rotary tables, the same replies; a
load that imports none of transformers' modeling stack; FP8 checkpoints; broken checkpoints."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
from PIL import Image  # noqa: E402

from agent.backends.options import EngineOptions  # noqa: E402
from agent.errors import VlagentError  # noqa: E402

SIZES = [(500, 300), (1920, 1080), (1280, 720), (37, 250), (3000, 41), (1366, 768), (64, 64), (2560, 1600)]


@pytest.fixture(scope="module")
def tiny():
    from agent.backends.tiny import tiny_checkpoint
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def pair(tiny):
    """(native backend, transformers backend), both with the engine, same checkpoint."""
    from agent.backends.transformers import TransformersBackend
    native = TransformersBackend(tiny, device="cpu", engine=True, options=EngineOptions(native=True))  # float32, also on a GPU machine
    ref = TransformersBackend(tiny, device="cpu", engine=True, options=EngineOptions(native=False))
    assert native.native and not ref.native
    return native, ref


def _image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    return Image.fromarray(arr, mode)


def test_smart_resize_is_transformers_own():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as theirs

    from agent.backends.qwen_images import smart_resize
    sizes = SIZES + [(w, h) for w in range(30, 4000, 397) for h in range(40, 3000, 451)]
    for w, h in sizes:
        for lo, hi in ((65_536, 16_777_216), (3136, 1_003_520), (200_000, 400_000)):
            assert smart_resize(h, w, 32, lo, hi) == theirs(h, w, factor=32, min_pixels=lo, max_pixels=hi), (w, h)
    with pytest.raises(ValueError):
        smart_resize(10, 3000, 32, 65_536, 16_777_216)


def test_prompt_text_token_ids_and_patches_equal_transformers(pair):
    native, ref = pair
    assert native.processor.image_token_id == ref.processor.image_token_id
    shots = [_image(*s, seed=i) for i, s in enumerate(SIZES[:4])] + [_image(300, 200, 9, "RGBA")]
    msgs = [{"role": "system", "content": [{"type": "text", "text": "You operate a desktop."}]},
            {"role": "user", "content": [{"type": "text", "text": "Fill the form: «name» = Zoë"}, {"type": "image", "image": shots[0]}]},
            {"role": "assistant", "content": [{"type": "text", "text": '<tool_call>\n{"name": "computer_use"}\n</tool_call>'}]},
            {"role": "user", "content": [{"type": "image", "image": shots[1]}, {"type": "text", "text": "next"}]}]
    assert native.processor.apply_chat_template(msgs) == ref.processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert native._ids(msgs)[0] == ref._ids(msgs)[0]
    assert native.count_tokens(msgs) == ref.count_tokens(msgs) == len(native._ids(msgs)[0])
    for shot in shots:
        a = native.processor.image_processor(images=[shot])
        b = ref.processor.image_processor(images=[shot], return_tensors="pt")
        assert a["image_grid_thw"].tolist() == b["image_grid_thw"].tolist()
        assert a["pixel_values"].shape == b["pixel_values"].shape
        assert float((a["pixel_values"] - b["pixel_values"]).abs().max()) < 1e-5


def _screen(w, h, seed):
    """A desktop-like frame: flat panels with text (noise is no screenshot: PIL's bicubic rounds to
    whole levels between its passes, torch's does not, and noise makes that visible everywhere)."""
    from PIL import ImageDraw
    img = Image.new("RGB", (w, h), (236, 236, 236))
    d = ImageDraw.Draw(img)
    rng = np.random.default_rng(seed)
    for i in range(40):
        x, y = int(rng.integers(0, w - 60)), int(rng.integers(0, h - 30))
        d.rectangle([x, y, x + int(rng.integers(20, 300)), y + int(rng.integers(15, 60))],
                    fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        d.text((x + 4, y + 4), f"Button {i}", fill=(0, 0, 0))
    return img


def test_gpu_resize_stays_within_levels_of_pils(pair):
    """On a GPU the native processor resizes there, as torchvision does (antialiased bicubic on the
    tensor; on the H100 within one level of transformers' torchvision processor: gpu_native_check.py).
    Against PIL's resize, on the CPU: under 1 % of the values differ, at sharp edges (text), by up to
    ~17 levels where the image shrinks a little."""
    native, ref = pair
    level = 2 / 255  # one 8-bit level after normalising with mean = std = 0.5
    for w, h in ((1920, 1080), (1366, 768), (1000, 700)):
        shot = _screen(w, h, w)
        c, grid = native.processor.image_processor.one(shot, "cpu", resize_on_device=True)
        b = ref.processor.image_processor(images=[shot], return_tensors="pt")
        assert grid == b["image_grid_thw"].tolist()[0]
        diff = (c - b["pixel_values"]).abs()
        assert float((diff > 1e-5).float().mean()) < 0.01 and float(diff.mean()) < 0.05 * level, (w, h)
        assert float(diff.max()) <= 32 * level, (w, h)


@pytest.mark.parametrize("rows", [2048, 7])  # 7: the queries, the MLP and the rotary run over slices of patches
def test_vision_tower_and_rotary_equal_transformers(pair, monkeypatch, rows):
    from agent.backends import qwen3vl_model
    monkeypatch.setattr(qwen3vl_model, "VISION_ROWS", rows)
    monkeypatch.setattr(qwen3vl_model, "ROTARY_ROWS", min(rows, 512) // 2)
    native, ref = pair
    shots = [_image(500, 300, 1), _image(96, 160, 2)]
    inputs = ref.processor.image_processor(images=shots, return_tensors="pt")
    with torch.no_grad():
        embeds, deep = native.model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        out = ref.model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        assert embeds.shape == out.pooler_output.shape and len(deep) == len(out.deepstack_features) > 0
        assert torch.allclose(embeds, out.pooler_output, atol=1e-5, rtol=1e-4)
        for a, b in zip(deep, out.deepstack_features):
            assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
        x = torch.zeros(1, 5, 64)
        pos = torch.tensor([[[0, 1, 2, 7, 9]], [[0, 3, 3, 4, 9]], [[0, 1, 5, 6, 9]]])
        for a, b in zip(native.model.model.language_model.rotary_emb(x, pos), ref.model.model.language_model.rotary_emb(x, pos)):
            assert torch.allclose(a, b, atol=1e-6)


def test_native_replies_equal_transformers(pair):
    native, ref = pair
    shots = [_image(640, 400, 3), _image(640, 400, 4)]
    msgs = [{"role": "system", "content": [{"type": "text", "text": "Click the OK button."}]},
            {"role": "user", "content": [{"type": "image", "image": shots[0]}]},
            {"role": "assistant", "content": [{"type": "text", "text": "ok"}]},
            {"role": "user", "content": [{"type": "image", "image": shots[1]}]}]
    for n in (2, 4):
        assert native.generate(msgs[:n]) == ref.generate(msgs[:n])


def test_native_load_imports_no_modeling_code(tiny):
    code = ("import sys, json\n"
            "from agent.backends.options import EngineOptions\n"
            "from agent.backends.transformers import TransformersBackend\n"
            f"b = TransformersBackend({str(tiny)!r}, engine=True, options=EngineOptions(native=True))\n"
            "heavy = ['transformers.modeling_utils', 'transformers.processing_utils', 'torch._dynamo', 'sympy']\n"
            "print(json.dumps({'native': b.native, 'imported': [m for m in heavy if m in sys.modules],\n"
            "                  'phases': sorted(b.load_timings)}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["native"] and got["imported"] == [], got
    assert {"import_s", "processor_s", "weights_s", "engine_s"} <= set(got["phases"])


@pytest.mark.slow
def test_fp8_checkpoint_loads_natively_as_through_transformers(tiny, tmp_path, monkeypatch):
    from agent.backends import fp8
    monkeypatch.setattr(fp8, "WIDEN_ROWS", 128)  # long inputs widen the weights a block of rows at a time
    dst = tmp_path / "block"
    fp8.save_fp8_checkpoint(tiny, dst, "block")
    for kernels in (False, True):
        a = fp8.load_fp8(dst, torch.float32, "cpu", kernels=kernels, native=True)
        b = fp8.load_fp8(dst, torch.float32, "cpu", kernels=kernels)
        assert a.fp8_layout == "block" and a.fp8_kernels == kernels
        assert (a.model.visual.blocks[0].attn.qkv.weight is None) == kernels
        px = torch.randn(16, 3 * 2 * 16 * 16, generator=torch.Generator().manual_seed(2))
        grid = torch.tensor([[1, 4, 4]])
        with torch.no_grad():
            assert torch.allclose(a.model.visual(px, grid_thw=grid)[0], b.model.visual(px, grid_thw=grid).pooler_output, atol=1e-5)


def test_broken_checkpoints_give_one_line(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    from agent.backends.transformers import TransformersBackend
    bad = tmp_path / "missing"
    shutil.copytree(tiny, bad)
    state = load_file(str(bad / "model.safetensors"))
    state.pop(next(k for k in state if k.endswith("layers.1.mlp.down_proj.weight")))
    save_file(state, str(bad / "model.safetensors"))
    with pytest.raises(VlagentError, match="missing .*down_proj") as e:
        TransformersBackend(bad, engine=True, options=EngineOptions(native=True))
    assert "\n" not in str(e.value)
    gone = tmp_path / "no-weights"  # no safetensors: transformers' load is asked, and says so in one line
    shutil.copytree(tiny, gone)
    (gone / "model.safetensors").unlink()
    with pytest.raises(VlagentError, match="cannot load model") as e:
        TransformersBackend(gone, engine=True, options=EngineOptions(native=True))
    assert "\n" not in str(e.value)


def test_a_config_the_native_load_does_not_read_goes_through_transformers(tiny, tmp_path):
    from agent.backends.qwen3vl_model import read_config
    from agent.backends.transformers import TransformersBackend
    odd = tmp_path / "rope"
    shutil.copytree(tiny, odd)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["text_config"]["rope_parameters"]["mrope_interleaved"] = False
    (odd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported text rope"):
        read_config(odd)
    b = TransformersBackend(odd, engine=True, options=EngineOptions(native=True))
    assert not b.native and hasattr(b.model, "generate")


@pytest.mark.parametrize("family", ["gui-owl-1.5", "mai-ui", "ui-venus-1.5"])
def test_each_familys_prompt_renders_as_its_processor_renders_it(family):
    """A family's checkpoint may bring its own chat template: the native processor takes it where
    AutoProcessor does."""
    from agent.backends.qwen3vl_processor import Processor
    from agent.backends.tiny import tiny_checkpoint
    from agent.backends.transformers import load_processor
    folder = tiny_checkpoint(family=family)
    shot = _image(320, 200, 5)
    msgs = [{"role": "system", "content": [{"type": "text", "text": "Operate the phone."}]},
            {"role": "user", "content": [{"type": "text", "text": "Open settings"}, {"type": "image", "image": shot}]}]
    native, ref = Processor(folder), load_processor(folder)
    assert native.apply_chat_template(msgs) == ref.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    assert native.image_token_id == ref.image_token_id


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused rotary kernel runs on a CUDA card")
def test_fused_vision_rotary_equals_the_torch_ops_to_the_bit(monkeypatch):
    from agent.backends import qwen3vl_model
    g = torch.Generator(device="cuda").manual_seed(0)
    fused = torch.randn(700, 2, 16, 64, device="cuda", generator=g).to(torch.bfloat16)
    plain = fused.clone()
    ang = torch.rand(700, 64, device="cuda", generator=g) * 50
    cos, sin = ang.cos(), ang.sin()
    qwen3vl_model._rotate(fused[:, 0], cos, sin)  # a view with the fused q/k/v's strides
    assert qwen3vl_model._ROTARY and qwen3vl_model._ROTARY[0] is not None  # the kernel ran, not the fallback
    monkeypatch.setattr(qwen3vl_model, "_ROTARY", [None])
    qwen3vl_model._rotate(plain[:, 0], cos, sin)
    assert torch.equal(fused, plain) and not torch.equal(fused[:, 0], fused[:, 1])
