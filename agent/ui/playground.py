"""The playground: one screenshot (grabbed from a display or uploaded) and one instruction in, the
model's proposed action out, drawn on the screenshot with its raw reply and timing; or, with a JSON
schema, a `query`: the model's answer as JSON under that schema (agent.flow.ask, as a flow's query
step asks it). The same
backends as `vlagent run` (a local model in this process, `--backend openai`, `script:FILE`); a
backend is loaded once and kept for the next question. Nothing is executed."""
from __future__ import annotations

import base64
import io
import threading
import time

from actions import ParseError, Policy, PolicyError, check_reply, to_json
from agent.errors import VlagentError

MAX_UPLOAD_PIXELS = 7680 * 4320


class Playground:
    def __init__(self, model: str, backend: str = "auto", base_url: str | None = None):
        self.default = (model, backend, base_url)
        self._backends: dict[tuple, object] = {}
        self._lock = threading.Lock()  # one question at a time: a local model is one device

    def backend(self, model: str | None, backend: str | None, base_url: str | None):
        from agent.ui.views import make_backend

        key = (model or self.default[0], backend or self.default[1], base_url or self.default[2])
        if key not in self._backends:
            self._backends[key] = make_backend(*key)
        return self._backends[key]

    def query(self, image, question: str, schema: dict, model: str | None = None, backend: str | None = None,
              base_url: str | None = None) -> dict:
        from agent.flow.ask import InvalidOutput, check_schema, query

        if not question.strip():
            raise VlagentError("type a question")
        bad = check_schema(schema)
        if bad:
            raise VlagentError(f"schema: {bad}")
        with self._lock:
            b = self.backend(model, backend, base_url)
            image = outgoing(image, b)
            t0 = time.perf_counter()
            try:
                answer = query(b, image, question, schema)
            except InvalidOutput as e:
                return {"error": str(e), "raw": "", "ms": round((time.perf_counter() - t0) * 1e3, 1),
                        "model": getattr(b, "name", ""), "size": list(image.size)}
            ms = (time.perf_counter() - t0) * 1e3
        return {"value": answer.value, "raw": answer.raw, "ms": round(ms, 1), "model": getattr(b, "name", ""),
                "size": list(image.size), "label": "query answered"}

    def ask(self, image, instruction: str, model: str | None = None, backend: str | None = None,
            base_url: str | None = None) -> dict:
        from agent.report.draw import action_label
        from agent.run.history import build_messages
        from agent.ui.views import overlay_html

        if not instruction.strip():
            raise VlagentError("type an instruction")
        policy = Policy()
        with self._lock:
            b = self.backend(model, backend, base_url)
            image = outgoing(image, b)
            messages = build_messages(instruction, [], image, policy, load_image=None)
            t0 = time.perf_counter()
            raw = b.generate(messages, policy)
            ms = (time.perf_counter() - t0) * 1e3
        out = {"raw": raw, "ms": round(ms, 1), "model": getattr(b, "name", ""), "size": list(image.size)}
        try:
            action = check_reply(raw, policy)
        except (ParseError, PolicyError) as e:
            return {**out, "error": str(e)}
        return {**out, "action": to_json(action), "label": action_label(action),
                "overlay": overlay_html(action, image.size)}


def outgoing(image, backend):
    """The frame as `backend` may see it: a display's frame going to a remote model has its password
    fields masked (agent.desktop.mask; no tree, no frame). An uploaded image goes as the person chose it."""
    display = image.info.get("display")
    if not display or not getattr(backend, "remote", False):
        return image
    from agent.desktop.mask import PASSWORD_FIELDS, masker_for
    from sandbox.atspi import Tree

    with Tree(display) as tree:
        why = f"sent to {getattr(backend, 'base_url', '') or 'the model'}"
        return masker_for(display, tree, PASSWORD_FIELDS, why, listed=False)(image)


def grab(display: str):
    import mss
    from PIL import Image

    try:
        with mss.MSS(display=display) as m:
            shot = m.grab(m.monitors[0])
    except Exception as e:
        raise VlagentError(f"cannot grab display {display}: {e}") from None
    image = Image.frombytes("RGB", shot.size, bytes(shot.bgra), "raw", "BGRX")
    image.info["display"] = display  # where it came from: outgoing() masks it for a remote model
    return image


def from_data_url(url: str):
    from PIL import Image

    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as im:
            if im.size[0] * im.size[1] > MAX_UPLOAD_PIXELS:
                raise VlagentError(f"the image is {im.size[0]}x{im.size[1]}: too large")
            return im.convert("RGB")
    except VlagentError:
        raise
    except Exception as e:
        raise VlagentError(f"cannot read the uploaded image: {e}") from None


def to_data_url(image, quality: int = 80) -> str:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
