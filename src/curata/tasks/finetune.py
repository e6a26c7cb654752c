"""Fine-tune the last blocks of the bundled EfficientNet-Lite and a new linear head, on CPU.

A linear probe (standardised pooled features + logistic regression) can only re-weight what ImageNet
taught the network; fine-tuning also adapts the last convolutional blocks to the collection. Doing
that for the whole network is hours on two cores, so `FineTuner` splits the network at a cut:

* the frozen trunk (stem + all but the last `blocks` MBConv blocks) is exported once per machine to
  ONNX (`export_trunk`) and run ONCE per image and augmented view; its activations (192 x 7 x 7 for
  Lite0 with up to 4 trainable blocks, ~37 kB per view) are held in memory;
* only the tail (the last `blocks` blocks, the 1x1 head convolution, a new linear layer) is trained,
  in PyTorch, on those cached activations: a few seconds per epoch for ~1000 images.

Training follows the linear-probe-then-fine-tune recipe (LP-FT, Kumar et al. 2022): the new head is
first fitted alone on the frozen tail's pooled features, so the first fine-tuning steps do not push
large random-head gradients into the pretrained blocks; then tail + head train with AdamW (the tail
at a tenth of the head's learning rate), label smoothing, one random augmented view per image per
epoch, batch-norm statistics frozen (batches of 32 are too small to re-estimate them), and the
epoch with the best validation accuracy (ties: lower validation loss) is kept (early stopping).

The API is scikit-learn-like and knows nothing about workspaces: `fit(images, y)` takes RGB uint8
arrays as `curata.imageio.load_image` returns them.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from curata.features.efficientnet import (
    EXPORT_VERSION,
    FEATURE_DIM,
    VARIANTS,
    as_rgb,
    build_torch_model,
    preprocess,
    tta_views,
)
from curata.features.onnx_runtime import OPSET, export_once, onnx_dir, open_session
from curata.imageio import resize_to
from curata.paths import default_threads
from curata.progress import SILENT, Reporter, active_reporter

FORMAT = "curata-finetune/1"
N_BLOCKS = {"lite0": 16, "lite2": 21}  # MBConv blocks of each variant (checked when the tail is built)
_TRUNK_BATCH = 32
PREDICT_CHUNK = 256  # images FineTunedClassifier decodes and predicts at a time
# Views the activations are cached for. Training draws one per image per epoch; prediction (and the
# validation that picks the epoch) averages the probabilities of the image and its mirror.
TRAIN_VIEWS = ("full", "flip", "crop", "crop_flip")  # the order of `tta_views`
PREDICT_VIEWS = (0, 1)  # full + flip: 2x the cost of one view, and flip-invariant


class FineTuneError(ValueError):
    """Inputs a fine-tuning cannot work with (too few classes or items, mismatched lengths); the
    message says what to change."""


# --------------------------------------------------------------------------------------------------
# The frozen trunk, as ONNX
# --------------------------------------------------------------------------------------------------


def cut_index(variant: str, blocks: int) -> int:
    """Index of the first trained MBConv block when the last `blocks` blocks are fine-tuned."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; expected one of {sorted(VARIANTS)}")
    n = N_BLOCKS[variant]
    if not isinstance(blocks, int) or not 0 <= blocks <= n:
        raise ValueError(f"blocks must be an integer in 0..{n} for {variant}, got {blocks!r}")
    return n - blocks


def trunk_path(variant: str, cut: int) -> Path:
    return onnx_dir() / f"efficientnet_{variant}_trunk{cut}_v{EXPORT_VERSION}.onnx"


def export_trunk(variant: str, cut: int, *, force: bool = False) -> Path:
    """Export stem + MBConv blocks [0, cut) of the pretrained model to ONNX once per machine (the
    eager PyTorch trunk is ~10x slower on 2 cores: ~65 ms against ~6 ms per 224 px view)."""

    def write(tmp: str) -> None:
        import warnings

        import torch

        net = build_torch_model(variant).net

        class Trunk(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                x = self.net._swish(self.net._bn0(self.net._conv_stem(x)))
                for block in self.net._blocks[:cut]:
                    x = block(x)
                return x

        size = VARIANTS[variant][0]
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Trunk().eval(), (torch.zeros(1, 3, size, size),), tmp, dynamo=False,
                              input_names=["image"], output_names=["activations"],
                              dynamic_axes={"image": {0: "batch"}, "activations": {0: "batch"}},
                              opset_version=OPSET, do_constant_folding=True)

    return export_once(trunk_path(variant, cut), write, force=force)


# --------------------------------------------------------------------------------------------------
# The trained tail
# --------------------------------------------------------------------------------------------------


def _make_tail(variant: str, cut: int, n_classes: int, dropout: float) -> Any:
    """The last blocks + head convolution of the pretrained model, and a new linear layer."""
    import torch

    net = build_torch_model(variant).net
    if len(net._blocks) != N_BLOCKS[variant]:  # a new efficientnet_lite_pytorch with another layout
        raise RuntimeError(f"{variant} has {len(net._blocks)} MBConv blocks, expected {N_BLOCKS[variant]}")

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList(copy.deepcopy(list(net._blocks[cut:])))
            self.conv_head = copy.deepcopy(net._conv_head)
            self.bn = copy.deepcopy(net._bn1)
            self.act = torch.nn.ReLU6()  # the lite models' activation (net._swish is a ReLU6)
            self.dropout = torch.nn.Dropout(dropout)
            self.fc = torch.nn.Linear(FEATURE_DIM, n_classes)

        def pooled(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return self.act(self.bn(self.conv_head(x))).mean(dim=(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.dropout(self.pooled(x)))

    return Tail()


def _freeze_batchnorm(module: Any) -> None:
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's thread count is process-wide: set it for the fit and restore it afterwards."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _labels(y: Any, who: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise FineTuneError(f"{who} must be one label per image (a 1-D sequence), got shape {arr.shape}")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise FineTuneError(f"{who} contains missing labels (NaN); drop those images first")
    if arr.dtype == object and any(v is None for v in arr):
        raise FineTuneError(f"{who} contains missing labels (None); drop those images first")
    return arr


def _check_images(images: Any, who: str) -> list[np.ndarray]:
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise FineTuneError(f"{who} must be a list of RGB uint8 arrays (H, W, 3), got {type(images).__name__}")
    out = []
    for i, image in enumerate(images):
        try:
            out.append(as_rgb(image))
        except ValueError as e:
            raise FineTuneError(f"{who}[{i}]: {e}") from None
    return out


class FineTuner:
    """Fine-tune the last `blocks` MBConv blocks + head convolution of EfficientNet-Lite and a new
    linear classifier (see the module doc for how, and why it is affordable on CPU).

    Parameters: `variant` ("lite0" or "lite2"); `blocks` trained MBConv blocks (0 = only the 1x1
    head convolution and the classifier); `epochs` at most, stopped `patience` epochs after the best
    validation accuracy; `lr` of the classifier (the blocks get `lr * tail_lr_scale`); `augment`:
    train on mirrored and centre-cropped views too; `val_fraction`: stratified part held out of the
    training data when `fit` gets no validation set; `refit`: then train again, from the same start, on all of
    the training data for the early-stopped epoch count (Goodfellow et al., Deep Learning, algorithm 7.2: the
    held-out part then chooses the epoch count without being lost to training); `threads`: torch / ONNX
    Runtime threads (None: `curata.paths.default_threads()`). Seeded: the same inputs and seed give the same model.

    After `fit`: `classes_`, `best_epoch_`, `history_` (per epoch: train loss, val accuracy, val loss,
    seconds), `n_train_`, `n_val_`, `fit_seconds_`.
    """

    def __init__(self, variant: str = "lite0", blocks: int = 2, *, epochs: int = 12, lr: float = 1e-3,
                 tail_lr_scale: float = 0.1, patience: int = 4, batch_size: int = 32,
                 weight_decay: float = 1e-4, label_smoothing: float = 0.1, dropout: float = 0.2,
                 augment: bool = True, warm_start_head: bool = True, val_fraction: float = 0.2,
                 refit: bool = False, seed: int = 0, threads: int | None = None):
        cut_index(variant, blocks)  # validates both
        if epochs < 1 or patience < 1 or batch_size < 1:
            raise ValueError("epochs, patience and batch_size must be at least 1")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.variant, self.blocks, self.epochs, self.lr = variant, blocks, epochs, lr
        self.tail_lr_scale, self.patience, self.batch_size = tail_lr_scale, patience, batch_size
        self.weight_decay, self.label_smoothing, self.dropout = weight_decay, label_smoothing, dropout
        self.augment, self.warm_start_head, self.val_fraction = augment, warm_start_head, val_fraction
        self.refit = refit
        self.seed, self.threads = seed, threads
        self._tail: Any = None
        self._session: Any = None

    # -- pickling (a model bundle holds the fitted FineTuner) -----------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # The tail is a local class (not picklable) and the ONNX session native: the tail travels as its
        # weights (NumPy arrays, readable without this torch version's pickles) and is rebuilt on load.
        state = {**self.__dict__, "_session": None, "_tail": None}
        if self._tail is not None:
            state["_tail_weights"] = {k: v.detach().cpu().numpy() for k, v in self._tail.state_dict().items()}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        weights = state.pop("_tail_weights", None)
        self.__dict__.update(state)
        if weights is not None:
            import torch

            tail = _make_tail(self.variant, self.cut, len(self.classes_), self.dropout)
            tail.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
            self._tail = tail.eval()

    # -- parameters ----------------------------------------------------------------------------------

    def get_params(self) -> dict[str, Any]:
        keys = ("variant", "blocks", "epochs", "lr", "tail_lr_scale", "patience", "batch_size", "weight_decay",
                "label_smoothing", "dropout", "augment", "warm_start_head", "val_fraction", "refit", "seed")
        return {k: getattr(self, k) for k in keys}

    @property
    def cut(self) -> int:
        return cut_index(self.variant, self.blocks)

    @property
    def size(self) -> int:
        return VARIANTS[self.variant][0]

    def _n_threads(self) -> int:
        return self.threads or default_threads()

    # -- trunk activations ---------------------------------------------------------------------------

    def _trunk(self) -> Any:
        if self._session is None:
            # No spinning: between runs this thread resizes the next views, and busy-waiting pool threads
            # would take the cores from it (and from torch's training threads later on).
            self._session = open_session(lambda force=False: export_trunk(self.variant, self.cut, force=force),
                                         self._n_threads(), spinning=False)
        return self._session

    def _views(self, image: np.ndarray, views: Sequence[int]) -> list[np.ndarray]:
        if max(views) >= 2:
            every = tta_views(image, self.size)
        else:  # full / mirror only: no crop to resize
            full = resize_to(as_rgb(image), self.size)
            every = [full, full[:, ::-1]]
        return [every[v] for v in views]

    def activations(self, images: list[np.ndarray], views: Sequence[int], reporter: Reporter = SILENT,
                    what: str = "images") -> np.ndarray:
        """Trunk activations of each image's `views` (indices into `tta_views`): (n, len(views), C, H, W)
        float32. The trunk runs once per image and view; this is the cost fine-tuning pays up front."""
        session = self._trunk()
        advance = reporter.task(f"fine-tune: trunk activations of {what}", len(images))
        out: np.ndarray | None = None
        step = max(1, _TRUNK_BATCH // len(views))
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            x = preprocess([view for im in chunk for view in self._views(im, views)], self.size)
            (acts,) = session.run(["activations"], {"image": x})
            acts = acts.reshape(len(chunk), len(views), *acts.shape[1:])
            if out is None:
                out = np.empty((len(images), *acts.shape[1:]), np.float32)
            out[start : start + len(chunk)] = acts
            advance(len(chunk))
        assert out is not None
        return out

    # -- fitting -------------------------------------------------------------------------------------

    def _split(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.model_selection import train_test_split

        classes, counts = np.unique(y, return_counts=True)
        few = [str(c) for c, n in zip(classes, counts, strict=True) if n < 2]
        if few:
            raise FineTuneError(
                f"class(es) {', '.join(few)} have a single image: each class needs at least 2 so that one can "
                "be held out for validation (add images, drop the class, or pass val_images/val_y)")
        # at least one per class; with >= 2 per class, as many are left to train on
        n_val = max(len(classes), round(self.val_fraction * len(y)))
        idx = np.arange(len(y))
        train, val = train_test_split(idx, test_size=n_val, stratify=y, random_state=self.seed)
        return np.sort(train), np.sort(val)

    def fit(self, images: Sequence[np.ndarray], y: Sequence[Any], val_images: Sequence[np.ndarray] | None = None,
            val_y: Sequence[Any] | None = None, *, reporter: Reporter = SILENT) -> FineTuner:
        """Fit on `images` (RGB uint8 arrays) and their labels; early-stop on (`val_images`, `val_y`), or
        on a stratified `val_fraction` of the training data when none is given."""
        t0 = time.perf_counter()
        images = _check_images(images, "images")
        labels = _labels(y, "y")
        if len(images) != len(labels):
            raise FineTuneError(f"got {len(images)} images but {len(labels)} labels")
        classes = np.unique(labels)
        if len(classes) < 2:
            raise FineTuneError(f"fine-tuning needs at least 2 classes, got {len(classes)}"
                                + (f" ({classes[0]!r})" if len(classes) else ""))
        if (val_images is None) != (val_y is None):
            raise FineTuneError("give both val_images and val_y, or neither")
        if val_images is None:
            train, val = self._split(labels)
            tr_images, tr_labels = [images[i] for i in train], labels[train]
            va_images, va_labels = [images[i] for i in val], labels[val]
        else:
            tr_images, tr_labels = images, labels
            va_images, va_labels = _check_images(val_images, "val_images"), _labels(val_y, "val_y")
            if len(va_images) != len(va_labels) or not len(va_images):
                raise FineTuneError(f"got {len(va_images)} validation images but {len(va_labels)} labels")
            unknown = sorted({str(v) for v in set(va_labels.tolist()) - set(classes.tolist())})
            if unknown:
                raise FineTuneError(f"validation labels not among the training classes: {', '.join(unknown)}")
        self.classes_ = classes
        ytr = np.searchsorted(classes, tr_labels)
        yva = np.searchsorted(classes, va_labels)
        with _torch_threads(self._n_threads()):
            views = tuple(range(len(TRAIN_VIEWS))) if self.augment else (0,)
            a_tr = self.activations(tr_images, views, reporter, "the training images")
            a_va = self.activations(va_images, PREDICT_VIEWS, reporter, "the validation images")
            self._train(a_tr, ytr, a_va, yva, reporter)
            if self.refit and val_images is None:
                # Early stopping chose the epoch count; now train for that many epochs on every image given
                # (the held-out part included) from the same start, so no label is spent on validation alone.
                if self.augment:  # the held-out images' crop views, beside the full + mirror views cached above
                    crops = self.activations(va_images, (2, 3), reporter, "the validation images' crops")
                    a_va = np.concatenate([a_va, crops], axis=1)
                else:
                    a_va = a_va[:, :1]
                a_tr, ytr = np.concatenate([a_tr, a_va]), np.concatenate([ytr, yva])
                self._train(a_tr, ytr, None, None, reporter, epochs=self.best_epoch_)
                yva = yva[:0]
        self.n_train_, self.n_val_ = len(ytr), len(yva)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _train(self, a_tr: np.ndarray, ytr: np.ndarray, a_va: np.ndarray | None, yva: np.ndarray | None,
               reporter: Reporter, epochs: int | None = None) -> None:
        """Train a fresh tail: early-stopped on (`a_va`, `yva`) (sets `best_epoch_`, `history_`), or, without
        them, for exactly `epochs` epochs on the same learning-rate schedule (the refit)."""
        import torch
        import torch.nn.functional as F

        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        tail = _make_tail(self.variant, self.cut, len(self.classes_), self.dropout)
        self._tail = tail
        x_tr, y_tr = torch.from_numpy(a_tr), torch.from_numpy(ytr.astype(np.int64))
        if a_va is None or yva is None:
            for epoch, _, _ in self._epochs(tail, x_tr, y_tr, rng, reporter, "fine-tune: refit on all", epochs):
                if epoch >= (epochs or self.epochs):
                    break
            tail.eval()
            return
        x_va, y_va = torch.from_numpy(a_va), torch.from_numpy(yva.astype(np.int64))
        best: tuple[float, float] | None = None
        best_state: dict[str, Any] = {}
        self.history_: list[dict[str, float]] = []
        since_best = 0
        for epoch, train_loss, started in self._epochs(tail, x_tr, y_tr, rng, reporter, "fine-tune: epochs"):
            probs = self._proba_from_activations(x_va)
            val_acc = float((probs.argmax(1) == y_va).float().mean())
            val_loss = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), y_va))
            self.history_.append({"epoch": epoch, "train_loss": round(train_loss, 4), "val_accuracy": round(val_acc, 4),
                                  "val_loss": round(val_loss, 4), "seconds": round(time.perf_counter() - started, 2)})
            if best is None or (val_acc, -val_loss) > best:
                best, since_best = (val_acc, -val_loss), 0
                best_state = copy.deepcopy(tail.state_dict())
                self.best_epoch_ = epoch
            else:
                since_best += 1
                if since_best >= self.patience:
                    break
        tail.load_state_dict(best_state)
        tail.eval()

    def _epochs(self, tail: Any, x_tr: Any, y_tr: Any, rng: np.random.Generator, reporter: Reporter, what: str,
                total: int | None = None) -> Iterator[tuple[int, float, float]]:
        """LP-FT on (`x_tr`, `y_tr`): the head fitted alone first, then tail + head with AdamW on a cosine schedule
        over `self.epochs`; yields (epoch, mean training loss, the epoch's start time) after each epoch, and the
        caller stops when it will (early stopping, or the refit's epoch count)."""
        import torch
        import torch.nn.functional as F

        n, n_views = x_tr.shape[:2]
        if self.warm_start_head:
            self._fit_head(x_tr, y_tr)
        head_params = list(tail.fc.parameters())
        other = [p for name, p in tail.named_parameters() if not name.startswith("fc.")]
        opt = torch.optim.AdamW([{"params": head_params, "lr": self.lr},
                                 {"params": other, "lr": self.lr * self.tail_lr_scale}],
                                weight_decay=self.weight_decay)
        steps = self.epochs * math.ceil(n / self.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        advance = reporter.task(what, total or self.epochs)
        for epoch in range(1, self.epochs + 1):
            started = time.perf_counter()
            tail.train()
            _freeze_batchnorm(tail)
            order = rng.permutation(n)
            view = rng.integers(0, n_views, n)  # one augmented view per image per epoch
            total_loss = 0.0
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                xb = x_tr[torch.from_numpy(idx), torch.from_numpy(view[idx])]
                loss = F.cross_entropy(tail(xb), y_tr[idx], label_smoothing=self.label_smoothing)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total_loss += float(loss.detach()) * len(idx)
            advance(1)
            yield epoch, total_loss / n, started

    def _fit_head(self, x_tr: Any, y_tr: Any) -> None:
        """The linear probe part of LP-FT: fit the new classifier alone (L-BFGS, L2) on the frozen
        tail's pooled features of every cached view."""
        import torch
        import torch.nn.functional as F

        tail = self._tail
        tail.eval()
        with torch.no_grad():
            flat = x_tr.reshape(-1, *x_tr.shape[2:])
            pooled = torch.cat([tail.pooled(flat[i : i + 256]) for i in range(0, len(flat), 256)])
        targets = y_tr.repeat_interleave(x_tr.shape[1])
        opt = torch.optim.LBFGS(tail.fc.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe")
        l2 = 1e-3

        def closure() -> Any:
            opt.zero_grad()
            loss = F.cross_entropy(tail.fc(pooled), targets) + l2 * tail.fc.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)

    def _proba_from_activations(self, acts: Any) -> Any:
        """Mean softmax over the cached views: (n, views, C, H, W) -> (n, classes) tensor."""
        import torch

        tail = self._tail
        tail.eval()
        with torch.no_grad():
            flat = acts.reshape(-1, *acts.shape[2:])
            logits = torch.cat([tail(flat[i : i + 128]) for i in range(0, len(flat), 128)])
            return logits.softmax(1).reshape(acts.shape[0], acts.shape[1], -1).mean(1)

    # -- prediction ----------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self._tail is None:
            raise RuntimeError("this FineTuner is not fitted yet: call fit() or FineTuner.load() first")

    def predict_proba(self, images: Sequence[np.ndarray], *, reporter: Reporter = SILENT) -> np.ndarray:
        """Class probabilities (n, len(classes_)), columns in `classes_` order: the mean of the image's
        and its mirror's."""
        import torch

        self._check_fitted()
        images = _check_images(images, "images")
        if not images:
            return np.zeros((0, len(self.classes_)), np.float32)
        with _torch_threads(self._n_threads()):
            out = []
            for start in range(0, len(images), 256):  # bounds the activations held at once
                acts = self.activations(images[start : start + 256], PREDICT_VIEWS, reporter)
                out.append(self._proba_from_activations(torch.from_numpy(acts)).numpy())
        return np.concatenate(out).astype(np.float32)

    def predict(self, images: Sequence[np.ndarray], *, reporter: Reporter = SILENT) -> np.ndarray:
        return self.classes_[self.predict_proba(images, reporter=reporter).argmax(axis=1)]

    # -- persistence ---------------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """Write `finetune.json` (parameters, classes, history) and `tail.pt` (the trained tail's
        state_dict: blocks + head convolution + classifier, ~6 MB for Lite0 with 2 blocks)."""
        import torch

        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "params": self.get_params(), "classes": self.classes_.tolist(),
                "classes_dtype": self.classes_.dtype.str, "best_epoch": getattr(self, "best_epoch_", None),
                "history": getattr(self, "history_", []), "n_train": getattr(self, "n_train_", None),
                "n_val": getattr(self, "n_val_", None), "export_version": EXPORT_VERSION}
        torch.save(self._tail.state_dict(), folder / "tail.pt")
        (folder / "finetune.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path, threads: int | None = None) -> FineTuner:
        """A fitted `FineTuner` from a folder `save` wrote (the pretrained weights come from the package)."""
        import torch

        folder = Path(folder)
        meta_path = folder / "finetune.json"
        if not meta_path.exists():
            raise FileNotFoundError(f"{folder} holds no fine-tuned model (finetune.json is missing)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path} is not a {FORMAT} model (format {meta.get('format')!r})")
        model = cls(**meta["params"], threads=threads)
        model.classes_ = np.asarray(meta["classes"], dtype=np.dtype(meta["classes_dtype"]))
        model.best_epoch_, model.history_ = meta["best_epoch"], meta["history"]
        model.n_train_, model.n_val_ = meta["n_train"], meta["n_val"]
        tail = _make_tail(model.variant, model.cut, len(model.classes_), model.dropout)
        tail.load_state_dict(torch.load(folder / "tail.pt", map_location="cpu", weights_only=True), strict=True)
        model._tail = tail.eval()
        return model


class FineTunedClassifier(ClassifierMixin, BaseEstimator):
    """`classify`'s "finetune" candidate: a `FineTuner` over the `image` block of the inputs (image paths of a
    workspace's items, or decoded images for new files: `curata.features.raw_image`), so that it trains,
    cross-validates, is chosen by validation and is saved in a bundle like the models over feature vectors.

    Images are loaded (`load_raw`: shrunk to twice the network's input) on `default_threads()` threads; one that
    cannot be loaded is an `ImageError` naming the file. The fine-tuner's own early stopping holds out a
    stratified 20% of whatever it is fitted on to choose the epoch count, then refits on all of it for that
    many epochs (`FineTuner(refit=True)`)."""

    def __init__(self, variant: str = "lite0", blocks: int = 1, epochs: int = 12, seed: int = 0,
                 block: str = "image"):
        self.variant = variant
        self.blocks = blocks
        self.epochs = epochs
        self.seed = seed
        self.block = block

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()  # scikit-learn's, with its version
        state.pop("_last", None)  # a bundle holds no remembered answer
        return state

    def _entries(self, x: dict[str, Any]) -> list[Any]:
        if not isinstance(x, dict) or self.block not in x:
            given = ", ".join(sorted(x)) if isinstance(x, dict) else type(x).__name__
            raise FineTuneError(f"fine-tuning reads the '{self.block}' block (the images themselves), which the "
                                f"inputs lack (given: {given}); add '{self.block}' to --features")
        return list(x[self.block])

    @staticmethod
    def _load(entries: list[Any], advance: Any = None) -> list[np.ndarray]:
        from concurrent.futures import ThreadPoolExecutor

        from curata.features.raw_image import load_raw

        advance = advance or active_reporter().task("fine-tune: loading images", len(entries))

        def load(entry: Any) -> np.ndarray:
            image = load_raw(entry)
            advance(1)
            return image

        with ThreadPoolExecutor(max_workers=default_threads()) as pool:
            return list(pool.map(load, entries))

    def fit(self, x: dict[str, Any], y: Sequence[Any]) -> FineTunedClassifier:
        self.model_ = FineTuner(self.variant, blocks=self.blocks, epochs=self.epochs, refit=True, seed=self.seed)
        self.model_.fit(self._load(self._entries(x)), y, reporter=active_reporter())
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, x: dict[str, Any]) -> np.ndarray:
        entries = self._entries(x)
        # Cross-validation and `predict_blocks` ask for `predict` and `predict_proba` of the same inputs, and an
        # inference here is seconds: the last answer is kept, keyed by the paths or the pixels' digests.
        key = tuple(e if isinstance(e, str) else _digest(e) for e in entries)
        last = getattr(self, "_last", None)
        if last is not None and last[0] == key:
            return last[1]
        self._last = (key, self._predict_proba(entries))
        return self._last[1]

    def _predict_proba(self, entries: list[Any]) -> np.ndarray:
        # A chunk of images at a time: predicting a large workspace never holds more than PREDICT_CHUNK decoded.
        advance = active_reporter().task("fine-tune: predicting", len(entries))
        parts = []
        for i in range(0, len(entries), PREDICT_CHUNK):
            parts.append(self.model_.predict_proba(self._load(entries[i:i + PREDICT_CHUNK], lambda n: None)))
            advance(len(parts[-1]))
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes_)), np.float32)

    def predict(self, x: dict[str, Any]) -> np.ndarray:
        return self.classes_[self.predict_proba(x).argmax(axis=1)]


def _digest(image: Any) -> str:
    """A digest of an image array's pixels and shape (what `FineTunedClassifier` remembers its last answer by)."""
    import hashlib

    arr = np.ascontiguousarray(image)
    return hashlib.blake2b(arr.tobytes() + str(arr.shape).encode(), digest_size=16).hexdigest()
