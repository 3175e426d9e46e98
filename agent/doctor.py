"""`vlagent doctor`: is this machine ready? Each check says what is wrong and how to fix it."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable


SMOKE_TASK = """\
name: doctor_smoke
goal: Fill in the registration form for Ada Lovelace (ada@example.com) and submit it.
screen: {width: 640, height: 480}
setup:
  - launch: ["{python}", "-m", "sandbox.apps.form", "--out", "{workdir}/form.json"]
    wait_for_window: Registration
max_steps: 2
timeout_s: 120
success:
  - file_json: {path: "{workdir}/form.json", equals: {name: Ada Lovelace}}
"""


class Problem(Exception):
    """A failed check: the message says what is wrong, `fix` how to fix it."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.fix = fix


class Warning_(Problem):
    """Not a failure, but worth knowing (no GPU: the model runs, slowly, on the CPU)."""


def check_display() -> str:
    from sandbox.session import Sandbox

    if shutil.which("Xvfb") is None:
        raise Problem("Xvfb is not installed", "apt-get install xvfb (or run bash .ci/install)")
    if shutil.which("xdotool") is None:
        raise Problem("xdotool is not installed (setup waits for windows with it)", "apt-get install xdotool")
    with Sandbox(screen=(320, 240), workdir=Path(tempfile.mkdtemp())) as sb:
        return f"sandbox display {sb.display} started and stopped"


def check_input_and_capture() -> str:
    from agent.desktop.x11 import X11Desktop
    from sandbox.session import Sandbox

    with Sandbox(screen=(320, 240), workdir=Path(tempfile.mkdtemp())) as sb, X11Desktop(sb.display) as desk:
        desk.move(100, 120)
        if desk.position() != (100, 120):
            raise Problem(f"the pointer is at {desk.position()} after moving to (100, 120)",
                          "check that pyautogui and python-xlib are installed and ~/.Xauthority exists")
        t0 = time.perf_counter()
        frame = desk.capture()
        ms = (time.perf_counter() - t0) * 1e3
        if frame.size != (320, 240):
            raise Problem(f"captured {frame.size}, expected (320, 240)", "check mss")
        return f"pointer moved; captured {frame.width}x{frame.height} in {ms:.0f} ms"


def check_ocr() -> str:
    from PIL import Image, ImageDraw, ImageFont

    from agent.ocr import ocr_text

    if shutil.which("tesseract") is None:
        raise Problem("tesseract is not installed", "apt-get install tesseract-ocr")
    img = Image.new("RGB", (400, 80), "white")
    try:
        font = ImageFont.load_default(size=36)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    ImageDraw.Draw(img).text((10, 15), "Saved 42", fill="black", font=font)
    text = ocr_text(img)
    if "saved" not in text.lower():
        raise Problem(f"OCR read {text!r} instead of 'Saved 42'", "apt-get install tesseract-ocr-eng")
    return "tesseract reads rendered text"


def check_model_stack() -> str:
    parts = []
    for name in ("torch", "transformers", "xgrammar"):
        if importlib.util.find_spec(name) is None:
            raise Problem(f"{name} is not installed", "pip install -e . (CPU: pip install torch==2.13.0 first)")
        parts.append(f"{name} {importlib.metadata.version(name)}")
    parts.append("flash-attn " + ("yes" if importlib.util.find_spec("flash_attn") else "no (sdpa is used)"))
    return ", ".join(parts)


def check_gpu() -> str:
    import torch

    if not torch.cuda.is_available():
        raise Warning_("no CUDA GPU: the model runs on the CPU (slow with real weights; fine for tiny-random)",
                       "on a machine with an NVIDIA GPU, bash .ci/install installs the CUDA build of torch")
    p = torch.cuda.get_device_properties(0)
    return f"{p.name}, {p.total_memory / 2**30:.1f} GiB"


def check_model(model: str) -> str:
    """The model a run would use loads: its files are here (or downloadable) and its weights load."""
    import gc

    from agent.backends import load_backend
    from agent.errors import VlagentError

    t0 = time.perf_counter()
    try:
        backend = load_backend(model)
    except VlagentError as e:
        raise Problem(str(e), f"download it (huggingface-cli download {model}) or pass --model /path/to/folder; "
                              "vlagent run --model tiny-random works offline") from None
    seconds = time.perf_counter() - t0
    where = getattr(getattr(backend, "model", None), "device", None)
    del backend
    gc.collect()
    return f"{model} loaded in {seconds:.1f} s" + (f" on {where}" if where is not None else "")


def check_smoke_run() -> str:
    from agent.backends import load_backend
    from agent.run.runner import run_task
    from agent.task import load_task

    folder = Path(tempfile.mkdtemp(prefix="vlagent-doctor-"))
    (folder / "task.yaml").write_text(SMOKE_TASK, encoding="utf-8")
    task = load_task(folder / "task.yaml")
    result, trace = run_task(task, load_backend("tiny-random"), trace_dir=folder / "trace")
    if result.status in ("error", "invalid_output"):
        raise Problem(f"smoke run ended with {result.status}: {result.reason}", f"see the trace in {trace}")
    steps = f"{result.steps} step" + ("" if result.steps == 1 else "s")
    return f"tiny model drove {steps} in a sandbox ({result.status}, as expected for random weights)"


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("display", check_display), ("input and capture", check_input_and_capture), ("OCR", check_ocr),
    ("model stack", check_model_stack), ("GPU", check_gpu), ("smoke run", check_smoke_run),
]
