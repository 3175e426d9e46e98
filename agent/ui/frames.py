"""The live display as a stream of JPEG frames: one capture thread per display, running only while
someone watches, shared by every viewer.

The thread grabs the screen with its own mss connection (the run's desktop is never touched),
skips a frame identical to the last one (a memcmp: a still screen costs a grab a tick and no
encoding), and encodes the rest as JPEG. Viewers read the newest frame (a slow viewer skips frames,
never delays the capture or the run). A frame carries its capture time, so the page and the
benchmark can tell how far behind the display it is.
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

FPS = 8  # capture rate; the target is >= 5 frames/s at 1280x800
JPEG_QUALITY = 70
IDLE_STOP_S = 2.0  # the thread stops this long after the last viewer left


@dataclass(frozen=True)
class Frame:
    seq: int
    t: float  # time.time() of the grab
    jpeg: bytes
    size: tuple[int, int]


class FrameSource:
    def __init__(self, display: str, fps: float = FPS, mask=None):
        """`mask(image) -> image`: paints over what must not be shown (secrets), or None."""
        self.display, self.period, self.mask = display, 1.0 / fps, mask
        self.latest: Frame | None = None
        self.stats = {"grabs": 0, "encoded": 0, "grab_ms": 0.0, "encode_ms": 0.0}
        self._cv = threading.Condition()
        self._viewers = 0
        self._last_viewer = 0.0
        self._thread: threading.Thread | None = None
        self._stop = False
        self.error: str | None = None

    # ---- viewers

    def watch(self):
        """A viewer arrives (pair with leave()); starts the capture thread if needed."""
        with self._cv:
            self._viewers += 1
            if self._thread is None or not self._thread.is_alive():
                self._stop = False
                self._thread = threading.Thread(target=self._loop, name=f"frames{self.display}", daemon=True)
                self._thread.start()

    def leave(self):
        with self._cv:
            self._viewers = max(0, self._viewers - 1)
            self._last_viewer = time.monotonic()

    def next(self, after: int, timeout: float = 1.0) -> Frame | None:
        """The newest frame with seq > after, waiting up to `timeout` (None if none came)."""
        with self._cv:
            self._cv.wait_for(lambda: (self.latest is not None and self.latest.seq > after) or self._stop, timeout)
            f = self.latest
        return f if f is not None and f.seq > after else None

    def close(self):
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---- the capture thread

    def _loop(self):
        import mss
        from PIL import Image

        try:
            grabber = mss.MSS(display=self.display)
        except Exception as e:
            self.error = f"cannot open display {self.display}: {e}"
            return
        previous, seq = b"", 0
        try:
            while True:
                with self._cv:
                    if self._stop or (self._viewers == 0 and time.monotonic() - self._last_viewer > IDLE_STOP_S):
                        return
                t0 = time.perf_counter()
                t = time.time()
                try:
                    shot = grabber.grab(grabber.monitors[0])
                except Exception as e:  # the display is gone (the run ended)
                    self.error = f"display {self.display}: {type(e).__name__}"
                    return
                raw = bytes(shot.raw)
                t1 = time.perf_counter()
                self.stats["grabs"] += 1
                self.stats["grab_ms"] += (t1 - t0) * 1e3
                if raw != previous:
                    previous = raw
                    image = Image.frombytes("RGB", shot.size, raw, "raw", "BGRX")
                    if self.mask is not None:
                        image = self.mask(image)
                    buf = io.BytesIO()
                    image.save(buf, "JPEG", quality=JPEG_QUALITY)
                    seq += 1
                    self.stats["encoded"] += 1
                    self.stats["encode_ms"] += (time.perf_counter() - t1) * 1e3
                    with self._cv:
                        self.latest = Frame(seq, t, buf.getvalue(), shot.size)
                        self._cv.notify_all()
                time.sleep(max(0.0, self.period - (time.perf_counter() - t0)))
        finally:
            grabber.close()


def mjpeg_part(frame: Frame) -> bytes:
    """One part of a multipart/x-mixed-replace stream (an <img> shows each as it comes)."""
    head = (f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame.jpeg)}\r\n"
            f"X-Frame-Time: {frame.t:.4f}\r\nX-Frame-Seq: {frame.seq}\r\n\r\n").encode()
    return head + frame.jpeg + b"\r\n"
