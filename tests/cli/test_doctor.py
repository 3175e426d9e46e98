"""`vlagent doctor` on this machine: every check passes, including the tiny-model smoke run."""
import pytest
import subprocess
import sys
from pathlib import Path

pytestmark = pytest.mark.slow  # starts displays, apps or models

ROOT = Path(__file__).resolve().parents[2]


def test_doctor_passes_on_a_set_up_machine():
    r = subprocess.run([sys.executable, "-m", "agent.cli", "doctor", "--model", "tiny-random"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("display", "input and capture", "OCR", "model stack", "model", "smoke run"):
        assert f"✓ {name}:" in r.stdout
    assert "✓ model: tiny-random loaded in" in r.stdout
    assert "✓ GPU:" in r.stdout or "! GPU: no CUDA GPU" in r.stdout  # no GPU is a warning, not a failure


def test_doctor_fails_when_the_chosen_model_cannot_load(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "agent.cli", "doctor", "--skip-smoke", "--model", str(empty)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "✗ model: cannot load model" in r.stdout and "no config.json" in r.stdout and "fix:" in r.stdout
    assert "all good" not in r.stdout


def test_doctor_names_the_fix_when_a_tool_is_missing(tmp_path):
    """With Xvfb and tesseract off the PATH, doctor fails and says what to install."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    env = {"PATH": str(bindir), "HOME": str(Path.home())}
    r = subprocess.run([str(bindir / "python"), "-m", "agent.cli", "doctor", "--skip-smoke"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert "✗ display: Xvfb is not installed" in r.stdout and "apt-get install xvfb" in r.stdout
    assert "✗ OCR: tesseract is not installed" in r.stdout
