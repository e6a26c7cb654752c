"""Optional model plug-ins: user-supplied local checkpoints behind the `Extractor` interface.

Nothing here downloads anything. Every plug-in takes `path`, a local directory (Hugging Face
`save_pretrained` layout) or checkpoint file, and loads it with `local_files_only=True` and the hub
switched to offline mode. Missing optional packages (open_clip, timm) or a missing/empty path
raise `PluginUnavailable` with a message that says what to install or what the path must hold.

- `HFCLIP`: a transformers CLIP model shared by an image extractor (`hf_clip_image`) and a text
  extractor (`hf_clip_text`), both in the same normalised embedding space (zero-shot search).
- `HFVision` (`hf_vision`): any transformers image backbone (`AutoModel`), pooled output.
- `OpenCLIPPlugin` (`open_clip`) and `TimmPlugin` (`timm`): import their package lazily.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curata.features.base import Extractor, PluginUnavailable, register
from curata.features.efficientnet import as_rgb
from curata.imageio import resize_to
from curata.paths import default_threads
from curata.vectors import l2_rows

# Large enough for 224-448 px backbones; the loader then draft-decodes only JPEGs > 1024 px.
_PLUGIN_MAX_SIDE = 512


@contextlib.contextmanager
def quiet_hf_loading() -> Iterator[None]:
    """Offline mode, and no progress bars or backend-fallback warnings while a model loads.

    Restores the previous transformers verbosity and progress-bar setting afterwards.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _require_package(module: str, pip_name: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise PluginUnavailable(
            f"{what} needs the optional package {module!r}, which is not installed: "
            f"install {pip_name} and give a local checkpoint path (path=...)"
        )


def _require_hf_dir(path: str | os.PathLike[str] | None, expected: str) -> Path:
    if path is None or str(path).strip() == "":
        raise PluginUnavailable(f"no model path given: expected {expected}")
    p = Path(path).expanduser()
    if not p.exists():
        raise PluginUnavailable(f"model path {str(p)!r} does not exist: expected {expected}")
    if not p.is_dir():
        raise PluginUnavailable(f"model path {str(p)!r} is not a directory: expected {expected}")
    if not (p / "config.json").is_file():
        what = "is empty" if not any(p.iterdir()) else "has no config.json"
        raise PluginUnavailable(f"model path {str(p)!r} {what}: expected {expected}")
    return p.resolve()


def _require_file(path: str | os.PathLike[str] | None, expected: str) -> Path:
    if path is None or str(path).strip() == "":
        raise PluginUnavailable(f"no checkpoint path given: expected {expected}")
    p = Path(path).expanduser()
    if not p.is_file() or p.stat().st_size == 0:
        state = "does not exist" if not p.exists() else "is not a non-empty file"
        raise PluginUnavailable(f"checkpoint path {str(p)!r} {state}: expected {expected}")
    return p.resolve()


def _abspath(path: str | os.PathLike[str] | None) -> str | None:
    """Absolute form for the cache key: the same checkpoint gives the same key from any cwd."""
    if path is None or str(path).strip() == "":
        return None
    return str(Path(path).expanduser().resolve())


PLUGIN_NAMES = ("hf_clip_image", "hf_clip_text", "hf_vision", "open_clip", "timm")
PATHS_FILE = "plugins.json"  # in a workspace: the local path of each plug-in its features were computed with
_PATHS: dict[str, str] = {}  # plug-in name -> path, for this process (`--plugin-path`, a workspace's file)


def plugin_path(name: str, given: str | os.PathLike[str] | None) -> str | None:
    """The path a plug-in loads from: `given`, else the one set for `name` in this process (`curata features
    --plugin-path`, or the workspace's plugins.json), else the environment variable CURATA_PLUGIN_PATH_<NAME>.
    The same path must reach every later command, since it is part of the feature's key."""
    if given is not None and str(given).strip():
        return _abspath(given)
    return _abspath(_PATHS.get(name) or os.environ.get(f"CURATA_PLUGIN_PATH_{name.upper()}"))


def use_plugin_paths(paths: dict[str, str]) -> None:
    """Set plug-in paths for this process (name -> local path)."""
    _PATHS.update({name: str(path) for name, path in paths.items() if str(path).strip()})


def remember_plugin_paths(root: Path, paths: dict[str, str]) -> None:
    """Record plug-in paths in a workspace (merged with those already there), so that `train`, `search` and the
    service find the model that computed the workspace's features without being told again."""
    from curata.atomic import atomic_write_text

    known = read_plugin_paths(root)
    known.update({name: _abspath(path) or "" for name, path in paths.items()})
    atomic_write_text(root / PATHS_FILE, json.dumps(known, indent=2, sort_keys=True))
    use_plugin_paths(known)


def read_plugin_paths(root: Path) -> dict[str, str]:
    """A workspace's recorded plug-in paths ({} without a file; a damaged file is an error naming it)."""
    file = root / PATHS_FILE
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise PluginUnavailable(f"{file} is unreadable ({e}); delete it and run `curata features --plugin-path` "
                                "again") from e
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise PluginUnavailable(f"{file} must map plug-in names to paths")
    return data


def _set_torch_threads(threads: int | None) -> None:
    import torch

    torch.set_num_threads(threads or default_threads())


def _normalise(x: np.ndarray) -> np.ndarray:
    return l2_rows(np.asarray(x, dtype=np.float32))


def _texts(batch: list[Any]) -> list[str]:
    return ["" if t is None else str(t) for t in batch]


def _pooled(out: Any) -> Any:
    """Accept both transformers 4 (a tensor) and 5 (an output object) from get_*_features."""
    return out if hasattr(out, "ndim") else out.pooler_output


# Models are big: one instance per (kind, path) per process, shared by every extractor using it.
_SHARED: dict[tuple[str, str], Any] = {}
_SHARED_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------
# Hugging Face CLIP

_CLIP_EXPECTED = (
    "a local directory with a transformers CLIP model saved by save_pretrained "
    "(config.json, model weights, tokenizer files and preprocessor_config.json)"
)


class HFCLIP:
    """A transformers `CLIPModel` with its tokenizer and image processor, loaded from a local path.

    `encode_images` and `encode_texts` return L2-normalised float32 rows in the shared space, so a
    text query can be scored against image vectors with a dot product (empty text -> zero row).
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None, batch_size: int = 32):
        self.path = _require_hf_dir(path, _CLIP_EXPECTED)
        self.threads = threads
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any, Any] | None = None

    @classmethod
    def shared(cls, path: str | os.PathLike[str], threads: int | None = None) -> HFCLIP:
        key = ("hf_clip", str(_require_hf_dir(path, _CLIP_EXPECTED)))
        with _SHARED_LOCK:
            if key not in _SHARED:
                _SHARED[key] = cls(path, threads=threads)
            return _SHARED[key]

    @property
    def dim(self) -> int:
        import json

        config = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        return int(config.get("projection_dim", 512))

    def _load(self) -> tuple[Any, Any, Any]:
        with self._lock:
            if self._loaded is None:
                from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

                _set_torch_threads(self.threads)
                with quiet_hf_loading():
                    try:
                        model = CLIPModel.from_pretrained(str(self.path), local_files_only=True).eval()
                        tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
                        processor = AutoImageProcessor.from_pretrained(str(self.path), local_files_only=True)
                    except Exception as e:  # any loader failure means "this path is not usable"
                        raise PluginUnavailable(
                            f"cannot load a CLIP model from {str(self.path)!r}: {e}"
                        ) from e
                self._loaded = (model, tokenizer, processor)
            return self._loaded

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        model, _, processor = self._load()
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        rgb = [as_rgb(im) for im in images]
        for start in range(0, len(rgb), self.batch_size):
            chunk = rgb[start : start + self.batch_size]
            # channels_last must be explicit: a 1x3 or 3x3 image is otherwise read as channels-first.
            pixels = processor(images=chunk, return_tensors="pt", input_data_format="channels_last")
            with torch.inference_mode():
                feats = _pooled(model.get_image_features(pixel_values=pixels["pixel_values"]))
            out[start : start + len(chunk)] = feats.float().numpy()
        return _normalise(out)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        model, tokenizer, _ = self._load()
        texts = _texts(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Empty texts stay zero vectors, as in curata.features.text: "no text" matches nothing.
        keep = [i for i, t in enumerate(texts) if t.strip()]
        max_len = int(model.config.text_config.max_position_embeddings)
        for start in range(0, len(keep), self.batch_size):
            rows = keep[start : start + self.batch_size]
            enc = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_len,
                return_tensors="pt",
            )
            with torch.inference_mode():
                feats = _pooled(
                    model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
                )
            out[rows] = feats.float().numpy()
        return _normalise(out)

    def image_extractor(self) -> HFCLIPImage:
        ext = HFCLIPImage(self.path, threads=self.threads)
        ext._clip = self
        return ext

    def text_extractor(self) -> HFCLIPText:
        ext = HFCLIPText(self.path, threads=self.threads)
        ext._clip = self
        return ext


class _HFCLIPBase(Extractor):
    version: ClassVar[str] = "1"

    def __init__(self, path: str | os.PathLike[str] | None = None, threads: int | None = None):
        self.path = plugin_path(self.name, path)
        self.threads = threads
        self._clip: HFCLIP | None = None

    def params(self) -> dict[str, Any]:
        return {"path": self.path}

    @property
    def clip(self) -> HFCLIP:
        if self._clip is None:
            self._clip = HFCLIP.shared(self.path, threads=self.threads)  # type: ignore[arg-type]
        return self._clip

    @property
    def dim(self) -> int:
        return self.clip.dim

    _lazy = ("_clip",)


@register
class HFCLIPImage(_HFCLIPBase):
    """Image side of a local transformers CLIP model (normalised projection embeddings)."""

    name: ClassVar[str] = "hf_clip_image"
    modality = "image"
    max_side: ClassVar[int | None] = _PLUGIN_MAX_SIDE

    def transform(self, batch: list[np.ndarray]) -> np.ndarray:
        return self.clip.encode_images(batch)


@register
class HFCLIPText(_HFCLIPBase):
    """Text side of a local transformers CLIP model (normalised projection embeddings)."""

    name: ClassVar[str] = "hf_clip_text"
    modality = "text"

    def transform(self, batch: list[Any]) -> np.ndarray:
        return self.clip.encode_texts(batch)


# --------------------------------------------------------------------------------------------------
# Hugging Face vision backbone

_VISION_EXPECTED = (
    "a local directory with a transformers image model saved by save_pretrained "
    "(config.json, model weights and preprocessor_config.json)"
)


@register
class HFVision(Extractor):
    """Pooled output of a local transformers image backbone (ViT, DINOv2, ConvNeXt, ResNet, ...).

    pooling="auto" uses the model's `pooler_output` when it has one, else the mean of the last
    hidden state over tokens (or over space for convolutional maps); "mean" and "cls" force one.
    Rows are L2-normalised.
    """

    name: ClassVar[str] = "hf_vision"
    version: ClassVar[str] = "1"
    modality = "image"
    max_side: ClassVar[int | None] = _PLUGIN_MAX_SIDE

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        pooling: str = "auto",
        threads: int | None = None,
        batch_size: int = 32,
    ):
        if pooling not in ("auto", "mean", "cls"):
            raise ValueError("pooling must be 'auto', 'mean' or 'cls'")
        self.path = plugin_path(self.name, path)
        self.pooling = pooling
        self.threads = threads
        self.batch_size = batch_size
        self._loaded: tuple[Any, Any] | None = None
        self._dim: int | None = None

    def params(self) -> dict[str, Any]:
        return {"path": self.path, "pooling": self.pooling}

    _lazy = ("_loaded",)

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is None:
            path = _require_hf_dir(self.path, _VISION_EXPECTED)
            key = ("hf_vision", str(path))
            with _SHARED_LOCK:
                if key not in _SHARED:
                    from transformers import AutoImageProcessor, AutoModel

                    _set_torch_threads(self.threads)
                    with quiet_hf_loading():
                        try:
                            model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
                            processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
                        except Exception as e:  # any loader failure means "this path is not usable"
                            raise PluginUnavailable(
                                f"cannot load an image model from {str(path)!r}: {e}"
                            ) from e
                    _SHARED[key] = (model, processor)
                self._loaded = _SHARED[key]
        return self._loaded

    def _pool(self, out: Any) -> Any:
        hidden = getattr(out, "last_hidden_state", None)
        pooled = getattr(out, "pooler_output", None)
        if self.pooling == "auto" and pooled is not None:
            return pooled.flatten(1)  # conv nets return (n, c, 1, 1)
        if hidden is None:
            raise PluginUnavailable("the model output has neither pooler_output nor last_hidden_state")
        if hidden.ndim == 4:  # (n, c, h, w) feature map
            return hidden.mean(dim=(2, 3))
        if self.pooling == "cls":
            return hidden[:, 0]
        return hidden.mean(dim=1)

    def _run(self, images: list[np.ndarray]) -> np.ndarray:
        import torch

        model, processor = self._load()
        parts = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            pixels = processor(images=chunk, return_tensors="pt", input_data_format="channels_last")
            with torch.inference_mode():
                out = model(pixel_values=pixels["pixel_values"])
            parts.append(self._pool(out).float().numpy())
        return np.concatenate(parts, axis=0)

    @property
    def dim(self) -> int:
        if self._dim is None:
            # Backbones disagree on where the width lives in their config; one forward never does.
            self._dim = int(self._run([np.zeros((64, 64, 3), dtype=np.uint8)]).shape[1])
        return self._dim

    def transform(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        return _normalise(self._run([as_rgb(im) for im in batch]))


# --------------------------------------------------------------------------------------------------
# open_clip and timm (optional packages)


@register
class OpenCLIPPlugin(Extractor):
    """An open_clip model from a local checkpoint file; image embeddings, plus `encode_texts`.

    `model_name` is the open_clip architecture (e.g. "ViT-B-32"), `path` the checkpoint file.
    Architectures whose tokenizer lives on the Hugging Face hub need it in the local HF cache.
    """

    name: ClassVar[str] = "open_clip"
    version: ClassVar[str] = "1"
    modality = "image"
    max_side: ClassVar[int | None] = _PLUGIN_MAX_SIDE

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
    ):
        self.model_name = model_name
        self.path = plugin_path(self.name, path)
        self.threads = threads
        self._loaded: tuple[Any, Any, Any] | None = None

    def params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "path": self.path}

    _lazy = ("_loaded",)

    def check(self) -> Path:
        """Raise PluginUnavailable unless open_clip is installed and the checkpoint file exists."""
        _require_package("open_clip", "open_clip_torch", "the open_clip plug-in")
        return _require_file(self.path, f"an open_clip checkpoint file for {self.model_name!r}")

    def _load(self) -> tuple[Any, Any, Any]:
        if self._loaded is None:
            path = self.check()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import open_clip

            _set_torch_threads(self.threads)
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=str(path), device="cpu"
            )
            self._loaded = (model.eval(), preprocess, open_clip.get_tokenizer(self.model_name))
        return self._loaded

    @property
    def dim(self) -> int:
        model, _, _ = self._load()
        return int(model.visual.output_dim)

    def encode_images(self, images: list[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        model, preprocess, _ = self._load()
        x = torch.stack([preprocess(Image.fromarray(as_rgb(im))) for im in images])
        with torch.inference_mode():
            return _normalise(model.encode_image(x).float().numpy())

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        import torch

        model, _, tokenizer = self._load()
        with torch.inference_mode():
            return _normalise(model.encode_text(tokenizer(_texts(texts))).float().numpy())

    def transform(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_images(batch)


@register
class TimmPlugin(Extractor):
    """A timm image model from a local checkpoint file; pooled features (classifier removed).

    Preprocessing follows the model's data config (input size, mean, std) with a square resize of the
    whole image, no crop, like `effnet_lite*`. Rows are L2-normalised.
    """

    name: ClassVar[str] = "timm"
    version: ClassVar[str] = "1"
    modality = "image"
    max_side: ClassVar[int | None] = _PLUGIN_MAX_SIDE

    def __init__(
        self,
        model_name: str = "resnet50",
        path: str | os.PathLike[str] | None = None,
        threads: int | None = None,
        batch_size: int = 32,
    ):
        self.model_name = model_name
        self.path = plugin_path(self.name, path)
        self.threads = threads
        self.batch_size = batch_size
        self._loaded: tuple[Any, dict[str, Any]] | None = None

    def params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "path": self.path}

    _lazy = ("_loaded",)

    def check(self) -> Path:
        """Raise PluginUnavailable unless timm is installed and the checkpoint file exists."""
        _require_package("timm", "timm", "the timm plug-in")
        return _require_file(self.path, f"a timm checkpoint file (.safetensors/.pth) for {self.model_name!r}")

    def _load(self) -> tuple[Any, dict[str, Any]]:
        if self._loaded is None:
            path = self.check()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import timm

            _set_torch_threads(self.threads)
            model = timm.create_model(
                self.model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=0
            ).eval()
            self._loaded = (model, timm.data.resolve_model_data_config(model))
        return self._loaded

    @property
    def dim(self) -> int:
        return int(self._load()[0].num_features)

    def transform(self, batch: list[np.ndarray]) -> np.ndarray:
        import torch

        model, cfg = self._load()
        _, height, width = cfg["input_size"]
        mean = np.asarray(cfg["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(cfg["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for start in range(0, len(batch), self.batch_size):
            chunk = [resize_to(as_rgb(im), height) for im in batch[start : start + self.batch_size]]
            if height != width:  # resize_to is square; non-square inputs are rare in timm
                from PIL import Image

                chunk = [np.asarray(Image.fromarray(im).resize((width, height))) for im in chunk]
            x = (np.stack(chunk).astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - mean) / std
            with torch.inference_mode():
                out[start : start + len(chunk)] = model(torch.from_numpy(x)).float().numpy()
        return _normalise(out)
