"""Query encoders: one interface that maps texts, images and workspace items into one search space.

- `JointEncoder`: the joint space curata trains itself (`curata.search.joint`) on top of the bundled
  frozen encoders; item vectors come from the cached image features.
- `ClipEncoder` (model ``clip:<path>``): a zero-shot Hugging Face CLIP checkpoint from a local
  folder, through the `hf_clip_image` / `hf_clip_text` plug-ins.
- `OpenClipEncoder` (model ``open_clip:<architecture>:<checkpoint file>``): the same with open_clip,
  when that optional package is installed.
- `ZeroShotEncoder` (model ``zeroshot``, `curata.search.zeroshot`): nothing trained, ConSE over the
  ImageNet head fused with colour names in MiniLM's space; the default when a workspace has no joint
  space.

Every `encode_*` returns L2-normalised float32 rows (a row of zeros for an empty text or an item
whose features failed: it matches nothing). `card` names the model precisely enough that an index
built with one encoder is never queried with another (see `curata.search.searcher`).
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curata.features.base import Extractor
from curata.features.engine import compute, load_matrix
from curata.progress import SILENT, Reporter
from curata.search.joint import JointSpace, joint_bundles, load_joint
from curata.workspace import Workspace


class QueryEncoder(ABC):
    """Texts, images and workspace items -> rows of one normalised embedding space."""

    @property
    @abstractmethod
    def card(self) -> dict[str, Any]:
        """{"name", "kind", "version", "dim", "fingerprint"}: what built the vectors."""

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @property
    def dim(self) -> int:
        return int(self.card["dim"])

    @property
    def bytes_per_item(self) -> int:
        """Memory one item takes while encoding (its input features and its vector, float32): how
        `build_index` sizes its chunks to the memory budget. Encoders over other features say so."""
        return 4 * 2 * self.dim

    @property
    def index_name(self) -> str:
        """Folder name of this encoder's index under `<workspace>/index/`."""
        return re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)

    @abstractmethod
    def encode_texts(self, texts: list[str]) -> np.ndarray: ...

    def warm_text(self) -> None:
        """Get the text encoder ready for the first query (its model session), where it has such a step."""
        warm = getattr(getattr(self, "_text", None), "warm", None)
        if warm is not None:
            warm()

    @abstractmethod
    def encode_images(self, images: list[np.ndarray]) -> np.ndarray: ...

    @abstractmethod
    def encode_items(self, workspace: Workspace, items: pd.DataFrame, reporter: Reporter = SILENT) -> np.ndarray:
        """Vectors of workspace items in row order, from cached features (zeros where a feature is missing:
        call `compute_features` first)."""

    def feature_extractors(self) -> list[Extractor]:
        """The cached features `encode_items` reads."""
        return []

    def compute_features(self, workspace: Workspace, reporter: Reporter = SILENT) -> None:
        """Compute the features `encode_items` needs for every item lacking them: once per index build, not per
        chunk (planning reads the whole collection's hashes)."""
        for extractor in self.feature_extractors():
            compute(extractor, workspace, reporter=reporter)


def _check_images(images: list[np.ndarray]) -> None:
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3 or im.dtype != np.uint8 or im.size == 0:
            what = f"shape {getattr(im, 'shape', None)}, dtype {getattr(im, 'dtype', type(im).__name__)}"
            raise ValueError(f"image {i}: expected an RGB uint8 array (H, W, 3), got {what}")


def _item_vectors(extractor: Extractor, workspace: Workspace, items: pd.DataFrame, reporter: Reporter
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cached image features of `items` and a mask of the usable rows."""
    features, errors = load_matrix(workspace, extractor, items)
    return features, np.array([e is None for e in errors], dtype=bool)


class JointEncoder(QueryEncoder):
    """The trained joint space: frozen encoder features through the learnt projection heads."""

    def __init__(self, space: JointSpace):
        self.space = space
        self._image = space.image_extractor()
        self._text = space.text_extractor()

    @classmethod
    def from_workspace(cls, workspace: Workspace, name: str | None = None) -> JointEncoder:
        return cls(load_joint(workspace, name))

    @property
    def card(self) -> dict[str, Any]:
        c = self.space.card
        return {"name": c["name"], "kind": "joint_space", "version": c.get("created", ""), "dim": int(c["dim"]),
                "fingerprint": c.get("fingerprint", ""),
                "encoders": {role: enc["key"] for role, enc in c["encoders"].items()}}

    @property
    def bytes_per_item(self) -> int:
        return 4 * (self._image.dim + self.dim)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.space.embed_texts(self._text.transform(list(texts)))

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        _check_images(images)
        return self.space.embed_images(self._image.transform([self._image.prepare(im) for im in images]))

    def feature_extractors(self) -> list[Extractor]:
        return [self._image]

    def encode_items(self, workspace: Workspace, items: pd.DataFrame, reporter: Reporter = SILENT) -> np.ndarray:
        features, ok = _item_vectors(self._image, workspace, items, reporter)
        out = self.space.embed_images(features)
        out[~ok] = 0.0
        return out


def _unavailable(e: Exception) -> ValueError:
    return ValueError(f"{e} (no CLIP weights ship with curata: give a local checkpoint, or use a joint space "
                      "trained with `curata joint train`)")


def _folder_fingerprint(path: Path) -> str:
    """Cheap identity of a checkpoint: file names, sizes and modification times (no hashing of GBs)."""
    h = hashlib.sha1()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


class ClipEncoder(QueryEncoder):
    """A local Hugging Face CLIP checkpoint, zero-shot (the `hf_clip_image` / `hf_clip_text` plug-ins)."""

    def __init__(self, path: str | Path):
        from curata.features.plugins import HFCLIP, HFCLIPImage, PluginUnavailable

        try:
            self.clip = HFCLIP.shared(path)
            self.clip._load()  # fail now, with the reason, rather than on the first query
        except PluginUnavailable as e:
            raise _unavailable(e) from e
        self.path = self.clip.path
        self._image = HFCLIPImage(self.path)
        self._fingerprint = _folder_fingerprint(self.path)

    @property
    def card(self) -> dict[str, Any]:
        return {"name": f"clip:{self.path}", "kind": "clip", "version": self._image.key, "dim": self.clip.dim,
                "fingerprint": self._fingerprint}

    @property
    def index_name(self) -> str:
        return f"clip-{hashlib.sha1(str(self.path).encode()).hexdigest()[:10]}"

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.clip.encode_texts(list(texts))

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        _check_images(images)
        return self.clip.encode_images(images)

    def feature_extractors(self) -> list[Extractor]:
        return [self._image]

    def encode_items(self, workspace: Workspace, items: pd.DataFrame, reporter: Reporter = SILENT) -> np.ndarray:
        features, ok = _item_vectors(self._image, workspace, items, reporter)
        features[~ok] = 0.0
        return features


class OpenClipEncoder(QueryEncoder):
    """An open_clip checkpoint file (optional package), zero-shot."""

    def __init__(self, architecture: str, path: str | Path):
        from curata.features.plugins import OpenCLIPPlugin, PluginUnavailable

        self.plugin = OpenCLIPPlugin(architecture, path=path)
        try:
            self.plugin.check()
            self.plugin._load()
        except PluginUnavailable as e:
            raise _unavailable(e) from e
        self._fingerprint = _folder_fingerprint(Path(str(self.plugin.path)))

    @property
    def card(self) -> dict[str, Any]:
        return {"name": f"open_clip:{self.plugin.model_name}:{self.plugin.path}", "kind": "open_clip",
                "version": self.plugin.key, "dim": self.plugin.dim, "fingerprint": self._fingerprint}

    @property
    def index_name(self) -> str:
        return f"open_clip-{hashlib.sha1(self.name.encode()).hexdigest()[:10]}"

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.plugin.encode_texts(list(texts))

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        _check_images(images)
        return self.plugin.encode_images(images)

    def feature_extractors(self) -> list[Extractor]:
        return [self.plugin]

    def encode_items(self, workspace: Workspace, items: pd.DataFrame, reporter: Reporter = SILENT) -> np.ndarray:
        features, ok = _item_vectors(self.plugin, workspace, items, reporter)
        features[~ok] = 0.0
        return features


def make_encoder(workspace: Workspace, model: str | None = None) -> QueryEncoder:
    """`None`: the newest joint space of the workspace, or the zero-shot encoder when it has none; a bundle
    name; `zeroshot`; `clip:<path>`; `open_clip:<architecture>:<checkpoint>`."""
    if model is not None and not str(model).strip():
        raise ValueError("empty model name")
    if model == "zeroshot":
        from curata.search.zeroshot import ZeroShotEncoder

        return ZeroShotEncoder()
    if model is None:
        unreadable: list[str] = []
        if not joint_bundles(workspace, unreadable) and not unreadable:  # (a damaged card is reported instead)
            return _zeroshot_fallback(workspace)
    if model and model.startswith("clip:"):
        return ClipEncoder(model[len("clip:"):])
    if model and model.startswith("open_clip:"):
        architecture, _, path = model[len("open_clip:"):].partition(":")
        if not architecture or not path:
            raise ValueError(f"{model!r}: expected open_clip:<architecture>:<checkpoint file>")
        return OpenClipEncoder(architecture, path)
    return JointEncoder.from_workspace(workspace, model)


def _zeroshot_fallback(workspace: Workspace) -> QueryEncoder:
    """The zero-shot encoder for a workspace without a joint space, or one error saying what is missing."""
    try:
        from curata.search.zeroshot import ZeroShotEncoder

        return ZeroShotEncoder()
    except Exception as e:  # e.g. a bundled model package missing from this installation
        raise ValueError(f"no joint-space model in {workspace.root / 'models'} (train one with `curata joint "
                         f"train`), and the zero-shot encoder cannot run here either ({type(e).__name__}: {e})"
                         ) from e
