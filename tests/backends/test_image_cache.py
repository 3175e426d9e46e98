"""PerImage: results kept per live screenshot object, dropped when the screenshot is freed."""
import gc

from PIL import Image

from agent.backends.image_cache import PerImage


def test_computes_once_per_image_object_and_forgets_freed_images():
    cache, calls = PerImage(), []

    def compute(img):
        calls.append(img.size)
        return img.size

    a, b = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4))  # equal content, different screenshots
    assert cache.get(a, compute) == (4, 4) and cache.get(a, compute) == (4, 4)
    assert cache.get(b, compute) == (4, 4)
    assert len(calls) == 2 and len(cache) == 2
    del a
    gc.collect()
    assert len(cache) == 1
