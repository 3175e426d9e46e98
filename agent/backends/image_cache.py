"""Per-screenshot results kept while the screenshot lives.

The loop hands a backend the same PIL images step after step while they stay in the history.
PIL images are unhashable (they compare by content), so a WeakKeyDictionary cannot hold them: this
keys by identity and forgets an entry when its image is garbage-collected."""
from __future__ import annotations

import weakref
from typing import Any, Callable


class PerImage:
    def __init__(self):
        self._items: dict[int, tuple[weakref.ref, Any]] = {}

    def get(self, image, compute: Callable[[Any], Any]):
        key = id(image)
        hit = self._items.get(key)
        if hit is not None and hit[0]() is image:
            return hit[1]
        value = compute(image)
        try:
            ref = weakref.ref(image, lambda _, key=key: self._items.pop(key, None))
        except TypeError:  # not weak-referenceable: nothing to key on safely
            return value
        self._items[key] = (ref, value)
        return value

    def __len__(self) -> int:
        return len(self._items)
