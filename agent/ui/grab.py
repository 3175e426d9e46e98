"""The live view's frame grabber, in a process of its own so that encoding frames never competes
with a run for its interpreter lock: `python -m agent.ui.grab DISPLAY FPS QUALITY` writes, for each
frame that differs from the last, a header (capture time, width, height, length) and the JPEG
bytes to stdout, until stdout is closed."""
from __future__ import annotations

import io
import os
import struct
import sys
import time

HEADER = struct.Struct("<dHHI")  # time.time() of the grab, width, height, JPEG length
NICE = 10


def frames(display: str, fps: float, quality: int, out) -> None:
    import mss
    from PIL import Image

    period, previous = 1.0 / fps, b""
    with mss.MSS(display=display) as grabber:
        while True:
            t0 = time.perf_counter()
            t = time.time()
            shot = grabber.grab(grabber.monitors[0])
            raw = bytes(shot.raw)
            if raw != previous:  # a still screen costs a grab a tick, no encoding
                previous = raw
                buf = io.BytesIO()
                Image.frombytes("RGB", shot.size, raw, "raw", "BGRX").save(buf, "JPEG", quality=quality)
                data = buf.getvalue()
                out.write(HEADER.pack(t, shot.size[0], shot.size[1], len(data)) + data)
                out.flush()
            time.sleep(max(0.0, period - (time.perf_counter() - t0)))


def main() -> None:
    display, fps, quality = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    os.nice(NICE)  # a busy machine runs the agent first and the view later
    try:
        frames(display, fps, quality, sys.stdout.buffer)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
    except Exception as e:  # the display is gone: say why on stderr, exit 1
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
