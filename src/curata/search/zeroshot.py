"""Zero-shot search without any training: the ConSE fallback for collections that have no captions.

ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of Semantic Embeddings", 2014) puts
an image into a text embedding space through a classifier it already has: the image's vector is the
probability-weighted mean of the text embeddings of its top-T predicted class names. Here:

  object part   the ImageNet-1k head of EfficientNet-Lite0 (`effnet_lite0_logits`, cached per image
                like any feature): softmax, the top `top` classes, the mean of the MiniLM embeddings
                of their names (the first WordNet synonym: "goldfish", "jigsaw puzzle") weighted by
                their probabilities (renormalised over the top T);
  colour part   the image's palette (`palette`: k-means in L*a*b*), each colour named with the 12
                basic colour terms (CIEDE2000), the mean of the MiniLM embeddings of those names
                weighted by their share of the image; with `colour_feature="object_palette"`, the
                object's colour names (backdrop apart, as /v1/colours names them) weighted by their
                share of the object;
  fusion        both parts L2-normalised, averaged in MiniLM space with weight `colour_weight` on the
                colour part, normalised again;
  text          a query is embedded by MiniLM alone, so "red" finds red images through the colour
                names and "a goldfish" finds what the classifier calls a goldfish.

The space is MiniLM's own (384-d); nothing is learnt, so it works on any collection, captions or not,
and it is what `make_encoder(workspace, None)` uses when the workspace has no joint space
(`curata index build --model zeroshot` builds its index explicitly). The class-name and colour-name
embeddings are computed once per machine (1,012 short texts) and cached under `cache_dir()/zeroshot/`;
a text query needs neither (nor the image model): only MiniLM.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from typing import Any

import numpy as np
import pandas as pd

from curata.progress import SILENT, Reporter
from curata.search.encoders import QueryEncoder, _check_images, _item_vectors
from curata.search.joint import shared_extractor
from curata.workspace import Workspace

NAME = "zeroshot"
VERSION = "1"
TOP = 10  # ConSE's T: the classes whose names are mixed
COLOUR_WEIGHT = 0.5  # share of the colour part in the fused vector
COLOUR_FEATURES = ("palette", "object_palette")  # the whole image's colours, or the object's (backdrop apart)


def class_names() -> list[str]:
    """The 1000 ImageNet class names as MiniLM reads them: the first (most common) WordNet synonym."""
    from curata.features.efficientnet import imagenet_classes

    return [name.split(",")[0].strip() for name in imagenet_classes()]


def colour_names() -> list[str]:
    from curata.features.colornames import BASIC_COLORS

    return list(BASIC_COLORS)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _l2(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 0, x / np.where(norms > 0, norms, 1), 0.0)


def conse(probs: np.ndarray, label_vectors: np.ndarray, top: int = TOP) -> np.ndarray:
    """ConSE: per row of class probabilities, the mean of the top-`top` labels' vectors weighted by their
    probabilities renormalised over those `top` (rows of zeros stay zero), L2-normalised."""
    probs = np.asarray(probs, np.float64)
    top = max(1, min(top, probs.shape[1]))
    idx = np.argpartition(-probs, top - 1, axis=1)[:, :top]
    weights = np.take_along_axis(probs, idx, axis=1)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    mixed = np.einsum("nt,ntd->nd", weights, label_vectors[idx].astype(np.float64))
    return _l2(mixed).astype(np.float32)


def colour_shares(palettes: np.ndarray) -> np.ndarray:
    """(n, 12) share of each basic colour name in each palette vector (k x [L*, a*, b*, share]), or in each
    object palette vector (4k + 6 values: the object's names and shares, as `name_colours` gives them)."""
    from curata.features.object_palette import is_object_palette, object_names
    from curata.features.palette import dominant_color_names

    names = {name: j for j, name in enumerate(colour_names())}
    vectors = np.asarray(palettes, np.float64)
    out = np.zeros((len(vectors), len(names)), np.float64)
    if not len(vectors):
        return out
    if vectors.ndim == 2 and is_object_palette(vectors.shape[1]):
        named = object_names(vectors)  # rows of zeros name nothing
    else:
        named = [dominant_color_names(v) if np.any(v) else [] for v in vectors]
    for i, pairs in enumerate(named):
        for name, share in pairs:
            out[i, names[name]] += share
    return out


class ZeroShotEncoder(QueryEncoder):
    """ConSE over the ImageNet head fused with colour names, in MiniLM's space (see the module doc)."""

    def __init__(self, top: int = TOP, colour_weight: float = COLOUR_WEIGHT, colour_feature: str = "palette"):
        if top < 1 or not 0.0 <= colour_weight <= 1.0:
            raise ValueError("need top >= 1 and a colour weight in [0, 1]")
        if colour_feature not in COLOUR_FEATURES:
            raise ValueError(f"colour_feature must be one of {', '.join(COLOUR_FEATURES)}, got {colour_feature!r}")
        self.top = int(top)
        self.colour_weight = float(colour_weight)
        self._text = shared_extractor("minilm")  # sessions open lazily: a text query opens MiniLM only
        self._logits = shared_extractor("effnet_lite0_logits")
        # The colour feature's key is part of the card: an index built on the whole-image palette is never
        # extended with object colours (or the reverse); the default keeps existing indexes valid.
        self._palette = shared_extractor(colour_feature)
        self._labels: tuple[np.ndarray, np.ndarray] | None = None
        self._lock = threading.Lock()
        version = (f"{NAME}@{VERSION} top={self.top} colour={self.colour_weight:g} {self._text.key} "
                   f"{self._logits.key} {self._palette.key}")
        self._card = {"name": NAME, "kind": NAME, "version": version, "dim": self._text.dim,
                      "fingerprint": hashlib.sha1(version.encode()).hexdigest()[:16]}

    @property
    def card(self) -> dict[str, Any]:
        return dict(self._card)

    @property
    def bytes_per_item(self) -> int:
        return 4 * (self._logits.dim + self._palette.dim + self.dim)

    # ------------------------------------------------------------------------------------------ label vectors
    def label_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """MiniLM vectors of the class names (1000, 384) and of the colour names (12, 384), cached per
        machine by MiniLM's key and the names."""
        with self._lock:
            if self._labels is None:
                from curata.paths import cache_dir

                classes, colours = class_names(), colour_names()
                texts = classes + colours
                digest = hashlib.sha1("\n".join([self._text.key, *texts]).encode()).hexdigest()[:16]
                path = cache_dir() / "zeroshot" / f"labels-{digest}.npy"
                vectors = None
                if path.is_file():
                    try:
                        vectors = np.load(path, allow_pickle=False)
                    except (OSError, ValueError):
                        vectors = None
                if vectors is None or vectors.shape != (len(texts), self._text.dim):
                    vectors = self._text.transform(texts).astype(np.float32)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd, tmp = tempfile.mkstemp(prefix=".labels-", suffix=".npy", dir=path.parent)
                    try:
                        with os.fdopen(fd, "wb") as f:
                            np.save(f, vectors)
                        os.replace(tmp, path)
                    finally:
                        if os.path.exists(tmp):
                            os.unlink(tmp)
                self._labels = (vectors[: len(classes)], vectors[len(classes):])
            return self._labels

    def embed(self, logits: np.ndarray | None, palettes: np.ndarray | None) -> np.ndarray:
        """Fused vectors from ImageNet logits (n, 1000) and palette vectors (n, 4k; or object palettes, 4k + 6);
        a row of zeros in
        either input leaves that part out (only the other one counts), zeros in both give zeros."""
        n = len(logits) if logits is not None else len(palettes)  # type: ignore[arg-type]
        classes, colours = self.label_vectors()
        obj = np.zeros((n, classes.shape[1]), np.float32)
        col = np.zeros_like(obj)
        if logits is not None:
            has = np.abs(logits).sum(axis=1) > 0
            if has.any():
                obj[has] = conse(softmax(logits[has]), classes, self.top)
        if palettes is not None:
            col = _l2(colour_shares(palettes) @ colours.astype(np.float64)).astype(np.float32)
        w = self.colour_weight
        has_obj, has_col = obj.any(axis=1), col.any(axis=1)
        mix_obj = np.where(has_col, 1.0 - w, 1.0)[:, None] * obj
        mix_col = np.where(has_obj, w, 1.0)[:, None] * col
        return _l2(mix_obj + mix_col).astype(np.float32)

    # ------------------------------------------------------------------------------------------ encoder
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self._text.transform(list(texts)).astype(np.float32)

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        _check_images(images)
        _, logits = self._logits.features_and_logits([self._logits.prepare(im) for im in images])
        palettes = self._palette.transform([self._palette.prepare(im) for im in images])
        return self.embed(logits, palettes)

    def feature_extractors(self) -> list[Any]:
        return [self._logits, self._palette]

    def encode_items(self, workspace: Workspace, items: pd.DataFrame, reporter: Reporter = SILENT) -> np.ndarray:
        logits, ok_logits = _item_vectors(self._logits, workspace, items, reporter)
        palettes, ok_palette = _item_vectors(self._palette, workspace, items, reporter)
        logits[~ok_logits] = 0.0
        palettes[~ok_palette] = 0.0
        return self.embed(logits, palettes)
