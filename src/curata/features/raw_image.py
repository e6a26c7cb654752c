"""`image`: the decoded image itself, as an input block for models that learn their own features.

Every other extractor turns an image into a vector that the workspace stores once and every task reads back.
A fine-tuned network (`curata.tasks.finetune.FineTunedClassifier`) instead needs the pixels at training and
prediction time. Naming `image` among a task's features (`--features effnet_lite0,image`) gives it that block
through the same paths the vectors take, so training, `predict` on a workspace or on files, the service and
the Ray predictor need no branch of their own:

* in a workspace, the block holds each item's image path (an object array, nothing is decoded or stored:
  `stored = False`), and the model loads the images it needs;
* for new images (`predict` on files, the service, Ray), the bundle's extractors decode them as usual and this
  extractor passes each one on, shrunk (`shrink`) so a batch of large photos stays small.

Models load a path with `load_raw`, which shrinks the same way, so an image gives the same pixels by either road.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from curata import objectstore
from curata.features.base import Extractor, register
from curata.imageio import ImageError, load_image

MAX_SIDE = 448  # twice EfficientNet-Lite0's input: enough for its full view and centre crop, ~0.6 MB per image


def shrink(image: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """The image with its long side at most `max_side` (aspect kept, box-filtered); smaller ones unchanged."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def load_raw(entry: Any, max_side: int = MAX_SIDE) -> np.ndarray:
    """An `image` block entry as RGB uint8 pixels: a path is loaded (`curata.imageio.load_image`; an `ImageError`
    names the file and the reason), an array is taken as decoded; both are `shrink`-ed."""
    if isinstance(entry, (str, Path)):
        try:
            image = load_image(entry)
        except ImageError as e:  # the loader's reason does not always name the file: say which one
            reason = e.reason if str(entry) in e.reason else f"{entry}: {e.reason}"
            raise ImageError(e.code, f"{reason} (changed since ingest? `curata ingest` again checks every image)"
                             ) from e
        return shrink(image, max_side)
    return shrink(np.asarray(entry), max_side)


@register
class RawImage(Extractor):
    """The image itself (see the module doc). Its "vectors" are never computed or stored."""

    name = "image"
    version = "1"
    stored: ClassVar[bool] = False
    # Memory a model reading the block holds per image: the shrunk pixels and the fine-tuner's cached trunk
    # activations (4 views x 192 x 7 x 7 float32). Training samples rows to keep this within the budget.
    bytes_per_row: ClassVar[int] = MAX_SIDE * MAX_SIDE * 3 + 4 * 192 * 7 * 7 * 4

    @property
    def dim(self) -> int:
        return 0  # holds no vector: takes no room in the memory budget of a feature matrix

    def prepare(self, item: Any) -> Any:
        return shrink(item)

    def transform(self, batch: list[Any]) -> np.ndarray:
        out = np.empty(len(batch), dtype=object)
        for i, image in enumerate(batch):
            out[i] = image
        return out


def image_block(items: Any) -> tuple[np.ndarray, list[str | None]]:
    """The `image` block of workspace items: their image paths (object array) and per-row errors (an item
    without an image, or whose file is gone)."""
    paths = items["image"].tolist() if "image" in items else [None] * len(items)
    out = np.empty(len(paths), dtype=object)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        ok = isinstance(path, str) and path != ""
        out[i] = path if ok else ""
        # A stat per item asked for (not a decode; a HEAD request for an object): a file moved or deleted since
        # ingest is left out by name.
        errors.append("no image" if not ok else None if objectstore.exists(path) else f"image file missing: {path}")
    return out, errors
