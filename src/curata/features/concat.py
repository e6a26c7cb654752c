"""Concatenated features: `a+b` names the blocks of extractors `a` and `b` side by side.

`make_extractor("effnet_lite0+pixels_onehot")` builds a `ConcatExtractor`. It has no feature store of
its own: the engine computes and caches each block under its own extractor key (`compute`), and
`load_matrix` reads each block's cached matrix and joins them (`join_blocks`), so a block cached for
a task or another space is reused and nothing is stored twice. `transform` (query images, drawings
rendered in memory) runs each block's own `prepare` + `transform` and joins them the same way, so a
query vector and a cached item vector of the same image are the same vector.

Each block is L2-normalised per row before concatenation. The blocks live on unrelated scales
(measured on 300 items: EfficientNet-Lite0's pooled activations have row norms of 10-13, `pixels_onehot`
30 on filthy_peasants and 42 on CryptoPunks, from its 576 one-hot ones plus the RGB values in 0..1):
concatenated raw, the block with the larger norm dominates every inner product, distance and
regulariser downstream (kNN neighbours, linear models), and a block's row norm varies image to image
for reasons that are not its content (brightness, busy backgrounds). Normalised, each block
contributes a unit vector: equal weight, direction only. (The joint space's heads standardise each
dimension as well; the per-block normalisation is what makes the concatenation sensible for every
other consumer of the features.)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curata.features.base import Extractor

SEPARATOR = "+"


def is_concat(name: str) -> bool:
    return SEPARATOR in name


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; an all-zero row (an item whose block failed) stays zero."""
    x = np.asarray(x, np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def join_blocks(blocks: list[np.ndarray]) -> np.ndarray:
    """Per-block L2-normalised rows, concatenated (see the module doc for why per block)."""
    return np.concatenate([normalise_rows(b) for b in blocks], axis=1).astype(np.float32)


class ConcatExtractor(Extractor):
    """The blocks of several extractors of one modality, each L2-normalised per row, side by side.

    `name` is the spec (`effnet_lite0+pixels_onehot`), `dim` the sum of the blocks' dims, `key` the blocks'
    keys joined (a new version of a block changes it). Not registered by name: `make_extractor` builds it
    from any spec containing `+`. Blocks that must be fitted on the collection are not supported (their
    fitted state lives per workspace, which a query-time `transform` would not see)."""

    name = "concat"  # the class's; an instance's `name` is its spec (set in __init__)
    version = "1"

    def __init__(self, blocks: list[Extractor]):
        if len(blocks) < 2:
            raise ValueError("a concatenation needs at least two extractors")
        names = [b.name for b in blocks]
        if len(set(names)) != len(names):
            raise ValueError(f"extractor named twice in {SEPARATOR.join(names)}")
        modalities = {b.modality for b in blocks}
        if len(modalities) != 1:
            raise ValueError(f"cannot concatenate image and text extractors ({SEPARATOR.join(names)})")
        fitted = [b.name for b in blocks if b.needs_fit]
        if fitted:
            raise ValueError(f"{', '.join(fitted)} must be fitted on the collection and cannot be part of a "
                             "concatenation")
        self.blocks = list(blocks)
        self.name = SEPARATOR.join(names)  # type: ignore[misc]  (an instance attribute shadows the ClassVar)
        self.modality = modalities.pop()  # type: ignore[misc]
        sides = [b.max_side for b in blocks]
        # Loaded once for all blocks: the largest side any block asks for (None: one wants the full image).
        self.max_side = None if any(s is None for s in sides) else max(sides)  # type: ignore[misc,type-var]

    @property
    def dim(self) -> int:
        return sum(b.dim for b in self.blocks)

    @property
    def key(self) -> str:
        return SEPARATOR.join(b.key for b in self.blocks)

    def params(self) -> dict[str, Any]:
        return {}

    def prepare(self, item: Any) -> Any:
        """Each block's own per-item reduction: a tuple, one entry per block."""
        if self.modality == "text":
            return item
        return tuple(b.prepare(item) for b in self.blocks)

    def transform(self, batch: list[Any]) -> np.ndarray:
        """Each block's transform (inputs from `prepare`, or raw images/texts), normalised per block, joined."""
        if self.modality == "text":
            return join_blocks([b.transform(list(batch)) for b in self.blocks])
        parts = [x if isinstance(x, tuple) else self.prepare(x) for x in batch]
        return join_blocks([b.transform([p[i] for p in parts]) for i, b in enumerate(self.blocks)])
