"""The extractor contract: a named, versioned transform from a batch of inputs to an (n, dim) array.

Image extractors receive RGB uint8 arrays of shape (H, W, 3) produced by `curata.imageio.load_image`
(already oriented, alpha composited, first frame); text extractors receive strings. The engine
(`curata.features.engine`) owns loading, batching, caching and per-item error isolation, so an
extractor only does the maths. If `transform` raises on a batch, the engine retries item by item
and records the failing items' reasons; an extractor may also raise `ItemError` itself.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np


class PluginUnavailable(RuntimeError):
    """An optional model cannot be used: package not installed, or no usable local checkpoint (a user's
    set-up to fix, reported in one line)."""

class ItemError(ValueError):
    """An input an extractor cannot turn into a vector (the reason is shown to the user)."""


class Extractor(ABC):
    """Base class of every feature extractor.

    Subclasses set `name`, `version`, `modality`; `dim` may depend on parameters. Parameters are set
    in `__init__` and do no work there (models load lazily), scikit-learn style. Extractors whose
    output depends on the collection (tf-idf vocabulary, visual words, Word2Vec) set
    `needs_fit = True`, implement `fit` and persist the fitted state with `save`/`load`.
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    modality: ClassVar[Literal["image", "text"]] = "image"
    needs_fit: ClassVar[bool] = False
    # False for a block that is not a vector the workspace computes and stores (`image`: the image itself).
    stored: ClassVar[bool] = True
    # Longest image side the extractor needs; the loader decodes JPEGs in draft mode down to it.
    # None means the full image.
    max_side: ClassVar[int | None] = None

    # True when `transform` may run from several threads at once: the engine then runs one batch per
    # core on the `single_threaded()` copy instead of one batch at a time over all cores. ONNX models
    # gain ~1.3x on 2 cores: a 2-thread run waits at every layer for the slower thread, which the
    # JPEG decoding sharing the cores makes slower.
    parallel_batches: ClassVar[bool] = False

    # Attributes holding native state loaded on first use (an ONNX session, a torch model): pickling
    # drops them and worker processes rebuild them lazily; a `_lock` guarding the loading is re-created.
    _lazy: ClassVar[tuple[str, ...]] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = {**self.__dict__, **{name: None for name in self._lazy}}
        if "_lock" in state:
            state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_lock" in state:
            self._lock = threading.Lock()

    @property
    @abstractmethod
    def dim(self) -> int:
        """Length of the output vector."""

    @property
    def key(self) -> str:
        """Cache key part: name@version plus any parameter that changes the output."""
        params = self.params()
        suffix = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
        return f"{self.name}@{self.version}" + (f"[{suffix}]" if suffix else "")

    def params(self) -> dict[str, Any]:
        """Parameters that change the output (part of the cache key). Override when there are any."""
        return {}

    def prepare(self, item: Any) -> Any:
        """Per-item work done in the loader threads right after decoding (default: none).

        An extractor that needs only part of a large image (a pixel sample, a thumbnail) reduces it
        here, so a batch held in memory is small and the reduction runs in parallel with the model.
        """
        return item

    def single_threaded(self) -> Extractor:
        """The extractor to call from several threads at once (see `parallel_batches`), each call
        computing on its own thread. Default: itself."""
        return self

    def fit(self, inputs: list[Any]) -> Extractor:
        """Fit collection-dependent state. Default: nothing to fit."""
        return self

    @abstractmethod
    def transform(self, batch: list[Any]) -> np.ndarray:
        """Map a batch of inputs to a float32 array of shape (len(batch), dim)."""

    # Persistence of fitted state (only needed when needs_fit is True).
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "extractor.json").write_text(json.dumps({"key": self.key, "params": self.params()}))

    def load(self, directory: Path) -> Extractor:
        return self

    @property
    def is_fitted(self) -> bool:
        return not self.needs_fit


REGISTRY: dict[str, type[Extractor]] = {}


def register(cls: type[Extractor]) -> type[Extractor]:
    """Class decorator: make an extractor available by name to the CLI and the engine."""
    REGISTRY[cls.name] = cls
    return cls
