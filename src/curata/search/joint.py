"""A joint text-image space learnt on top of frozen encoders (locked-image tuning, as in LiT / NFT1000).

No CLIP weights ship with curata, so it learns its own cross-modal space: two small trainable heads
map the cached features of the bundled frozen encoders (EfficientNet-Lite0 pooled image features,
1280-d; MiniLM sentence embeddings, 384-d) into one shared `dim`-dimensional space where matching
image and caption have a high inner product. Training is the symmetric InfoNCE loss of CLIP with a
learnable temperature, on mini-batches, with early stopping on text->image recall@10 of a
validation split. Items that share an image (same content hash) or a caption are not negatives of
each other in a batch: they are all counted as positives (soft targets).

A bundle is a folder `models/<name>/`:

    card.json    kind "joint_space", the encoders (extractor keys) and dims, temperature, the
                 training summary (split, epochs, history) and validation metrics
    heads.pt     torch state dict of the two heads and the logit scale (a few MB)
    heads.npz    the same weights as plain numpy arrays plus the layer structure: what `JointSpace.load`
                 reads, so opening a space (and every search query) never imports torch; bundles made
                 before it existed load from heads.pt (with torch)
    split.json   the item ids of the train / val / held-out sets, so evaluation reuses the split
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curata.atomic import folder_view, replace_folder
from curata.features.base import Extractor
from curata.features.engine import compute, load_matrix, make_extractor, text_hash
from curata.features.store import FeatureStore
from curata.ingest.nft import nft1000_caption
from curata.progress import SILENT, Reporter
from curata.search.captions import ItemCaptions, item_captions, masked_variants
from curata.storage import location
from curata.workspace import Workspace

KIND = "joint_space"
KS = (1, 5, 10, 20, 50)
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's clamp: the temperature never falls below 0.01
TEXT_CACHE = "text-embeddings"
# What `select` may search, in the order it is searched: image features (EfficientNet-Lite0, plus
# `pixels_onehot` and the concatenation of both when the images are pixel art), head (linear / 2-layer
# MLP), attribute masking (p 0 / 0.3), batching (random / in-collection hard negatives).
SEARCHABLE = ("features", "head", "masking", "batching")
# The image-feature candidates on pixel art; `a+b` is the concatenation (curata.features.concat: each block
# from its own feature cache, L2-normalised per block, so neither dominates by scale).
PIXEL_ART_FEATURES = ("effnet_lite0", "pixels_onehot", "effnet_lite0+pixels_onehot")
BATCHING = ("random", "collection")
DEMO_COLLECTION = "curata demo drawings"  # the collection name of `pretrain_demo` drawings in the training data
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,80}$")


@dataclass
class JointOptions:
    image_features: str = "effnet_lite0"
    text_features: str = "minilm"
    dim: int = 256
    hidden: int = 512  # hidden width of the 2-layer heads; 0 = linear heads
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    mask_p: float = 0.3  # attribute masking probability; 0 disables
    variants: int = 4  # masked caption variants precomputed per item
    val_fraction: float = 0.2
    patience: int = 6  # epochs without a better val recall@10 before stopping
    seed: int = 0
    captions: str = "auto"  # caption source, see curata.search.captions
    holdout: tuple[str, ...] = ()  # collections left out of training entirely (unseen-collection test)
    max_items: int | None = None  # train on a random subsample (bounded runtime on big collections)
    name: str | None = None
    batching: str = "random"  # "random" mini-batches, or "collection": each batch within one collection
    select: tuple[str, ...] = ()  # choices made by validation (of SEARCHABLE); the others stay as given
    budget_s: float = 120.0  # time budget of the selection (candidates after it are skipped)
    select_epochs: int = 15  # most epochs per selection candidate (the winner is retrained for `epochs`)
    pretrain_demo: int = 0  # demo drawings (curata.demo, rendered in memory) added to the training rows

    def validate(self) -> None:
        if self.dim < 2 or self.epochs < 0 or self.batch_size < 2 or self.lr <= 0 or self.hidden < 0:
            raise ValueError("need dim >= 2, epochs >= 0, batch size >= 2, lr > 0, hidden >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val fraction must be in (0, 1), got {self.val_fraction}")
        if not 0.0 <= self.mask_p < 1.0:
            raise ValueError(f"mask probability must be in [0, 1), got {self.mask_p}")
        if self.max_items is not None and self.max_items < 4:
            raise ValueError("max items must be at least 4")
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be one of {', '.join(BATCHING)}, got {self.batching!r}")
        unknown = sorted(set(self.select) - set(SEARCHABLE))
        if unknown:
            raise ValueError(f"cannot select {', '.join(unknown)}; choose from {', '.join(SEARCHABLE)}")
        if self.budget_s <= 0 or self.select_epochs < 1 or self.pretrain_demo < 0:
            raise ValueError("need budget_s > 0, select_epochs >= 1 and pretrain_demo >= 0")
        if self.name is not None and not _NAME_RE.match(self.name):
            raise ValueError(f"model name {self.name!r}: use letters, digits, '_', '.', '-' (no path)")


# -------------------------------------------------------------------------------------------------- encoders

_SHARED: dict[str, Extractor] = {}
_SHARED_LOCK = threading.Lock()


def shared_extractor(name: str) -> Extractor:
    """One instance per extractor name per process, so MiniLM and the ONNX session load once, however
    many spaces, searchers and evaluations use them (both are thread-safe and hold no per-call state)."""
    with _SHARED_LOCK:
        if name not in _SHARED:
            _SHARED[name] = make_extractor(name)
        return _SHARED[name]


# -------------------------------------------------------------------------------------------------- text cache


def cached_text_features(workspace: Workspace, extractor: Extractor, texts: Sequence[str],
                         reporter: Reporter = SILENT) -> np.ndarray:
    """Text-encoder vectors of arbitrary texts (captions, masked variants), cached in
    `cache/text-embeddings/` by the text's SHA-256 (the same key the feature engine uses), so each
    distinct caption is encoded once per workspace, however often training reruns."""
    store = FeatureStore(workspace.dir("cache") / TEXT_CACHE, extractor.key, extractor.dim, "text")
    hashes = [text_hash(t) for t in texts]
    missing = store.missing(hashes)
    todo = {h: t for h, t, m in zip(hashes, texts, missing, strict=True) if m}
    if todo:
        advance = reporter.task(f"encoding captions ({extractor.name})", len(todo))
        keys, values = list(todo), list(todo.values())
        step = 256  # one commit per chunk: an interrupted run keeps what it encoded
        try:
            for start in range(0, len(keys), step):
                vectors = extractor.transform(values[start : start + step])
                store.append(keys[start : start + step], vectors, [None] * len(vectors))
                advance(len(vectors))
        finally:
            store.finish()  # index the new rows; merge the small fragments once there are many
    matrix, _ = store.lookup(hashes)
    return matrix


# -------------------------------------------------------------------------------------------------- model


def _torch():
    import torch

    torch.set_num_threads(2)  # the heads are small; more threads only fight the rest of the box
    return torch


def _build_model(in_image: int, in_text: int, options: JointOptions):
    torch = _torch()
    nn = torch.nn

    class Head(nn.Module):
        """Standardise (statistics of the training set), then a linear or 2-layer map, L2-normalised."""

        def __init__(self, in_dim: int) -> None:
            super().__init__()
            self.register_buffer("mean", torch.zeros(in_dim))
            self.register_buffer("inv_std", torch.ones(in_dim))
            if options.hidden:
                self.net = nn.Sequential(nn.Linear(in_dim, options.hidden), nn.GELU(), nn.Dropout(options.dropout),
                                         nn.Linear(options.hidden, options.dim))
            else:
                self.net = nn.Linear(in_dim, options.dim)

        def fit_scaler(self, x) -> None:
            self.mean.copy_(x.mean(0))
            self.inv_std.copy_(1.0 / x.std(0).clamp_min(1e-4))

        def forward(self, x):
            return nn.functional.normalize(self.net((x - self.mean) * self.inv_std), dim=-1)

    class Joint(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image = Head(in_image)
            self.text = Head(in_text)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

        def scale(self):
            return self.logit_scale.clamp(0.0, MAX_LOGIT_SCALE).exp()

    return Joint()


# -------------------------------------------------------------------------------------------------- metrics


def recall_at_k(queries: np.ndarray, gallery: np.ndarray, query_group: np.ndarray, gallery_group: np.ndarray,
                ks: Sequence[int] = KS) -> dict[int, float]:
    """Share of queries whose best-scoring positive (a gallery row of the same group) ranks in the
    top K. The rank counts gallery rows scoring strictly higher; a query without any positive in the
    gallery counts as a miss."""
    if len(queries) == 0:
        return {k: 0.0 for k in ks}
    ranks = np.empty(len(queries), np.int64)
    g = np.asarray(gallery_group)
    for start in range(0, len(queries), 1024):
        scores = queries[start : start + 1024] @ gallery.T
        pos = np.asarray(query_group[start : start + 1024])[:, None] == g[None, :]
        best = np.where(pos, scores, -np.inf).max(axis=1)
        rank = (scores > best[:, None]).sum(axis=1)
        rank[~pos.any(axis=1)] = len(gallery)
        ranks[start : start + len(rank)] = rank
    return {k: float((ranks < k).mean()) for k in ks}


# -------------------------------------------------------------------------------------------------- data


@dataclass
class JointData:
    """Items with usable features and captions, the captions' text vectors, and who owns what."""

    items: pd.DataFrame  # the usable items, row i <-> image_features[i]
    image_features: np.ndarray
    text_features: np.ndarray  # one row per distinct caption text
    texts: list[str]
    variants: list[list[int]]  # per item: rows of text_features training samples from
    captions: list[list[int]]  # per item: rows of its full captions (the evaluation queries)
    groups: np.ndarray  # per item: id of its image content (identical images share it)
    skipped: dict[str, int] = field(default_factory=dict)
    item_captions: list[ItemCaptions] = field(default_factory=list)  # per item: captions and attributes


def load_data(workspace: Workspace, items: pd.DataFrame, image_extractor: Extractor, text_extractor: Extractor,
              *, captions: str = "auto", mask_p: float = 0.0, variants: int = 4, seed: int = 0,
              reporter: Reporter = SILENT) -> JointData:
    """Image features (computing missing ones), captions and their masked variants, text vectors."""
    compute(image_extractor, workspace, reporter=reporter)
    image, errors = load_matrix(workspace, image_extractor, items)
    caps = item_captions(items, captions)
    ok = [i for i, (e, c) in enumerate(zip(errors, caps, strict=True)) if e is None and c.captions]
    skipped = {"no image features": sum(e is not None for e in errors),
               "no caption": sum(not c.captions for c in caps)}
    items = items.iloc[ok].reset_index(drop=True)
    image = image[ok]
    caps = [caps[i] for i in ok]
    per_item = [masked_variants(c, mask_p, variants, seed) for c in caps]
    texts = list(dict.fromkeys(t for v in per_item for t in v))
    row = {t: i for i, t in enumerate(texts)}
    text = cached_text_features(workspace, text_extractor, texts, reporter)
    _, groups = np.unique(items["image_sha256"].to_numpy(dtype=str), return_inverse=True)
    return JointData(items, image.astype(np.float32), text.astype(np.float32), texts,
                     [[row[t] for t in v] for v in per_item],
                     [[row[t] for t in c.captions] for c in caps], groups.astype(np.int64),
                     {k: v for k, v in skipped.items() if v}, caps)


def split_items(items: pd.DataFrame, val_fraction: float, seed: int, holdout: Sequence[str] = ()
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (train, val, held-out). Items with the same image land on the same side, so a
    duplicate cannot leak from train into val; held-out collections are in neither."""
    held = items["collection"].isin(list(holdout)).to_numpy()
    rest = np.flatnonzero(~held)
    shas = items["image_sha256"].to_numpy(dtype=str)
    unique = np.unique(shas[rest])
    rng = np.random.default_rng(seed)
    n_val = max(1, round(len(unique) * val_fraction))
    if len(unique) - n_val < 2:
        raise ValueError(f"too few distinct images ({len(unique)}) for a train/val split")
    val_shas = set(rng.permutation(unique)[:n_val])
    is_val = np.array([shas[i] in val_shas for i in rest], dtype=bool)
    return rest[~is_val], rest[is_val], np.flatnonzero(held)


# -------------------------------------------------------------------------------------------------- space


HEADS_NPZ = "heads.npz"
_NPZ_FORMAT = 1


def _layer_names(names: Sequence[str]) -> list[str]:
    """The linear layers of a head in forward order ("net" alone, or "net.0" then "net.3")."""
    layers = {name.rsplit(".", 1)[0] for name in names if name.endswith(".weight")}
    return sorted(layers, key=lambda n: [int(p) if p.isdigit() else -1 for p in n.split(".")])


def _head_arrays(head: Any) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy().astype(np.float32) for name, t in head.state_dict().items()}


def heads_npz_arrays(model: Any) -> dict[str, np.ndarray]:
    """The torch heads as the arrays of `heads.npz`: `image/<param>` and `text/<param>` (standardisation
    `mean`, `inv_std`, then each linear layer's `weight` (out, in) and `bias`), `logit_scale`, and
    `structure`, a JSON string: the format, each head's linear layers in forward order, and what runs
    between them (exact GELU) and after the last (L2 normalisation)."""
    arrays: dict[str, np.ndarray] = {}
    structure: dict[str, Any] = {"format": _NPZ_FORMAT, "between_layers": "gelu_erf", "output": "l2_normalise"}
    for role in ("image", "text"):
        weights = _head_arrays(getattr(model, role))
        structure[role] = _layer_names(list(weights))
        arrays.update({f"{role}/{name}": value for name, value in weights.items()})
    arrays["logit_scale"] = np.asarray(float(model.logit_scale.detach()), np.float32)
    arrays["structure"] = np.asarray(json.dumps(structure))
    return arrays


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _read_heads_npz(path: Path, card: dict[str, Any]) -> tuple[dict[str, dict[str, np.ndarray]], float]:
    """The heads' weights from `heads.npz` ({role: {param: array}}) and the logit scale; shapes are checked
    against the card. Raises on anything unreadable or inconsistent (the caller names the file)."""
    with np.load(path, allow_pickle=False) as z:
        structure = json.loads(str(z["structure"][()]))
        if structure.get("format") != _NPZ_FORMAT:
            raise ValueError(f"format {structure.get('format')!r}, this installation reads {_NPZ_FORMAT}")
        heads = {role: {name.split("/", 1)[1]: np.ascontiguousarray(z[name], np.float32) for name in z.files
                        if name.startswith(role + "/")} for role in ("image", "text")}
        logit_scale = float(z["logit_scale"])
    for role, head in heads.items():
        layers = structure[role]
        if layers != _layer_names(list(head)) or not layers:
            raise ValueError(f"the {role} head's layers {layers} do not match its arrays")
        width = int(card["encoders"][role]["dim"])
        if head["mean"].shape != (width,) or head["inv_std"].shape != (width,):
            raise ValueError(f"the {role} head standardises {head['mean'].shape} inputs, the card says {width}")
        for layer in layers:
            w, b = head[f"{layer}.weight"], head[f"{layer}.bias"]
            if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
                raise ValueError(f"the {role} head's layer {layer} has shape {w.shape}, expected (*, {width})")
            width = w.shape[0]
        if width != int(card["dim"]):
            raise ValueError(f"the {role} head outputs {width}-d vectors, the card says {card['dim']}")
    return heads, logit_scale


def _erf(x: np.ndarray) -> np.ndarray:
    """erf in numpy (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7, below float32's resolution of the GELU
    output): scipy.special would cost the first query ~0.3 s of imports for one function."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * \
        np.exp(-x * x)
    return np.copysign(y, x)


class JointSpace:
    """A trained (or untrained) joint space: embeds image and text features into the shared space.

    `model` is the torch module while training (embeddings then follow its current weights); a space
    loaded from `heads.npz` has no model, only `heads` (numpy arrays) and never touches torch."""

    def __init__(self, model: Any, card: dict[str, Any], directory: Path | None = None, *,
                 heads: dict[str, dict[str, np.ndarray]] | None = None, logit_scale: float | None = None):
        self.model = model
        self.card = card
        self.directory = directory
        self.heads = heads  # {role: {param: array}}: fixed weights (a loaded space), else read from `model`
        self._logit_scale = logit_scale

    @property
    def name(self) -> str:
        return str(self.card.get("name", ""))

    @property
    def dim(self) -> int:
        return int(self.card["dim"])

    def image_extractor(self) -> Extractor:
        return shared_extractor(self.card["encoders"]["image"]["extractor"])

    def text_extractor(self) -> Extractor:
        return shared_extractor(self.card["encoders"]["text"]["extractor"])

    def _embed(self, head: Any, x: np.ndarray) -> np.ndarray:
        """The head's eval-mode forward, in numpy on the head's weights (a dict of arrays, or a torch head's
        current ones): for one search query torch's per-op thread hand-offs cost ~3 ms against ~0.1 ms
        here (same result to 1e-6)."""
        x = np.asarray(x, dtype=np.float32)
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        weights = head if isinstance(head, dict) else _head_arrays(head)
        linears = _layer_names(list(weights))
        erf = _erf
        out = np.empty((len(x), self.dim), np.float32)
        for a in range(0, len(x), 4096):
            h = (x[a:a + 4096] - weights["mean"]) * weights["inv_std"]
            for i, layer in enumerate(linears):  # "net" alone, or "net.0" then "net.3" (GELU, dropout between)
                h = h @ weights[f"{layer}.weight"].T + weights[f"{layer}.bias"]
                if i < len(linears) - 1:
                    h = 0.5 * h * (1.0 + erf(h / np.sqrt(2.0)))  # exact GELU, torch's default
            out[a:a + 4096] = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        out[~np.abs(x).sum(axis=1).astype(bool)] = 0.0  # an empty input (no text) matches nothing
        return out

    def _head(self, role: str) -> Any:
        return self.heads[role] if self.heads is not None else getattr(self.model, role)

    def embed_images(self, features: np.ndarray) -> np.ndarray:
        return self._embed(self._head("image"), features)

    def embed_texts(self, features: np.ndarray) -> np.ndarray:
        return self._embed(self._head("text"), features)

    @property
    def temperature(self) -> float:
        if self.heads is not None and self._logit_scale is not None:
            return float(1.0 / math.exp(min(max(self._logit_scale, 0.0), MAX_LOGIT_SCALE)))
        return float(1.0 / self.model.scale().item())

    @classmethod
    def load(cls, directory: Path) -> JointSpace:
        from curata.tasks.bundle import read_card_json

        directory = location(directory)
        card = read_card_json(directory, "a joint-space bundle")
        files = folder_view(directory)  # the folder itself, or its published generation copied from the bucket
        if card.get("kind") != KIND:
            raise ValueError(f"{directory.name} is a {card.get('kind') or card.get('task') or 'model'} bundle, "
                             "not a joint space (train one with `curata joint train`)")
        for role in ("image", "text"):
            enc = card["encoders"][role]
            current = make_extractor(enc["extractor"]).key
            if current != enc["key"]:
                raise ValueError(f"joint space {directory.name} was trained on {enc['key']} but this installation "
                                 f"computes {current}; retrain it")
        weights = files / "heads.pt"
        retrain = (f"retrain it with `curata joint train --features {card['encoders']['image']['extractor']},"
                   f"{card['encoders']['text']['extractor']} --name {directory.name}`")
        npz = files / HEADS_NPZ
        if npz.is_file() and card.get("heads_npz"):
            # The numpy copy: no torch. Both files are checked against the digests the card recorded, so a
            # damaged bundle is named, not half used.
            for path, digest in ((npz, card["heads_npz"]), (weights, card.get("fingerprint"))):
                if digest and path.is_file() and _file_digest(path) != digest:
                    raise ValueError(f"{path} does not match the bundle's card: it is truncated or corrupt; {retrain}")
            try:
                heads, logit_scale = _read_heads_npz(npz, card)
            except Exception as e:  # truncated, not an npz, missing arrays, other shapes
                raise ValueError(f"{npz} cannot be loaded ({type(e).__name__}: {e}); it is truncated or corrupt: "
                                 f"{retrain}") from e
            return cls(None, card, directory, heads=heads, logit_scale=logit_scale)
        options = JointOptions(**{k: v for k, v in card["params"].items() if k in JointOptions.__dataclass_fields__})
        model = _build_model(card["encoders"]["image"]["dim"], card["encoders"]["text"]["dim"], options)
        if not weights.is_file():
            raise ValueError(f"{directory} has a card but no heads.pt; {retrain}")
        try:
            model.load_state_dict(_torch().load(weights, map_location="cpu", weights_only=True))
        except Exception as e:  # truncated (EOFError, RuntimeError) or of other shapes
            reason = (str(e).strip().splitlines() or [""])[0]  # torch's messages run over many lines
            raise ValueError(f"{weights} cannot be loaded ({type(e).__name__}: {reason}); it is truncated or "
                             f"corrupt: {retrain}") from e
        model.eval()
        heads = {role: _head_arrays(getattr(model, role)) for role in ("image", "text")}  # fixed from here on
        return cls(model, card, directory, heads=heads, logit_scale=float(model.logit_scale.detach()))

    def split(self) -> dict[str, list[str]]:
        path = folder_view(self.directory or Path()) / "split.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def joint_bundles(workspace: Workspace, unreadable: list[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(name, card) of every joint-space bundle in the workspace, newest first. Cards that cannot be read
    are skipped; pass a list as `unreadable` to collect them (path and reason)."""
    found = []
    models = workspace.root / "models"
    from curata.tasks.bundle import bundle_cards

    for folder, data in bundle_cards(models):
        try:
            card = json.loads(data)
        except ValueError as e:
            if unreadable is not None:
                unreadable.append(f"{folder / 'card.json'} ({e})")
            continue
        if isinstance(card, dict) and card.get("kind") == KIND:
            found.append((folder.name, card))
    return sorted(found, key=lambda nc: (str(nc[1].get("created", "")), nc[0]), reverse=True)


def load_joint(workspace: Workspace, name: str | None = None) -> JointSpace:
    """A joint space of the workspace by bundle name (or a bundle folder path); None = the newest."""
    if name is None:
        unreadable: list[str] = []
        bundles = joint_bundles(workspace, unreadable)
        if not bundles:
            damaged = f" (unreadable model card: {'; '.join(unreadable)})" if unreadable else ""
            raise ValueError(f"no joint-space model in {workspace.root / 'models'}{damaged}; train one with "
                             "`curata joint train`")
        name = bundles[0][0]
    path = Path(name)
    directory = path if path.is_dir() and (path / "card.json").exists() else workspace.root / "models" / name
    if not (folder_view(directory) / "card.json").exists():
        raise ValueError(f"no model named {name!r} in {workspace.root / 'models'}")
    return JointSpace.load(directory)


# -------------------------------------------------------------------------------------------------- training


def _versions() -> dict[str, str]:
    from curata.tasks.bundle import _versions as bundle_versions

    return bundle_versions()


def _evaluate_rows(space: JointSpace, data: JointData, rows: np.ndarray, ks: Sequence[int] = KS
                   ) -> dict[str, float]:
    """Text->image and image->text recall@K within `rows` (gallery = those items)."""
    if len(rows) == 0:
        return {}
    images = space.embed_images(data.image_features[rows])
    cap_rows = [c for r in rows for c in data.captions[r]]
    cap_group = np.array([data.groups[r] for r in rows for _ in data.captions[r]])
    texts = space.embed_texts(data.text_features[cap_rows])
    t2i = recall_at_k(texts, images, cap_group, data.groups[rows], ks)
    i2t = recall_at_k(images, texts, data.groups[rows], cap_group, ks)
    out = {f"t2i_r{k}": round(v, 4) for k, v in t2i.items()}
    out.update({f"i2t_r{k}": round(v, 4) for k, v in i2t.items()})
    return out


def collection_batches(collections: np.ndarray, rows: np.ndarray, batch_size: int, rng: np.random.Generator
                       ) -> list[np.ndarray]:
    """Mini-batches of `rows` drawn within one collection each (in-collection hard negatives: the loss
    sees the near-identical tokens search must tell apart), in a random order. `collections[r]` is row
    r's collection."""
    rows = np.asarray(rows)
    owner = np.asarray(collections)[rows]
    batches: list[np.ndarray] = []
    for name in sorted(set(owner.tolist())):
        part = rng.permutation(rows[owner == name])
        batches += [part[a:a + batch_size] for a in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def random_batches(rows: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(rows)
    return [order[a:a + batch_size] for a in range(0, len(order), batch_size)]


def demo_drawings(n: int, size: int = 96, seed: int = 0) -> tuple[list[np.ndarray], list[ItemCaptions]]:
    """`n` drawings of the built-in generator (curata.demo), rendered in memory with their NFT1000
    captions (the traits they were drawn with), cycling through the algorithms. Deterministic per seed."""
    from curata.demo.generate import ALGORITHMS, PALETTES_BY_NAME, draw_traits, token_digest

    algorithms = tuple(ALGORITHMS)
    images, captions = [], []
    for i in range(n):
        algorithm = algorithms[i % len(algorithms)]
        digest = token_digest(seed, algorithm, i // len(algorithms))
        rng = np.random.default_rng(int.from_bytes(digest, "big"))
        traits = draw_traits(rng, algorithm)
        images.append(ALGORITHMS[algorithm](rng, PALETTES_BY_NAME[traits["palette"]], traits, size))
        attributes = [{"trait_type": k, "value": v} for k, v in traits.items()]
        name = f"{algorithm.title()} #{i // len(algorithms) + 1}"
        captions.append(ItemCaptions(f"demo-drawing/{i}", [nft1000_caption(name, attributes)], name, attributes))
    return images, captions


def _add_demo(workspace: Workspace, data: JointData, train: np.ndarray, image_ext: Extractor, text_ext: Extractor,
              options: JointOptions, reporter: Reporter = SILENT) -> tuple[JointData, np.ndarray]:
    """`options.pretrain_demo` demo drawings appended to the data as training rows only (never val or held
    out), as the collection "curata demo drawings"; features computed in memory, nothing ingested."""
    images, caps = demo_drawings(options.pretrain_demo, seed=options.seed)
    advance = reporter.task(f"demo drawings ({image_ext.name})", len(images))
    feats = []
    for a in range(0, len(images), 32):
        feats.append(np.asarray(image_ext.transform([image_ext.prepare(im) for im in images[a:a + 32]]), np.float32))
        advance(len(images[a:a + 32]))
    per_item = [masked_variants(c, options.mask_p if options.mask_p else 0.3, options.variants, options.seed)
                for c in caps]
    new_texts = [t for t in dict.fromkeys(t for v in per_item for t in v) if t not in set(data.texts)]
    texts = data.texts + new_texts
    row = {t: i for i, t in enumerate(texts)}
    text = np.vstack([data.text_features, cached_text_features(workspace, text_ext, new_texts, reporter)
                      .astype(np.float32)]) if new_texts else data.text_features
    n0 = len(data.items)
    items = pd.concat([data.items, pd.DataFrame({"id": [c.id for c in caps], "collection": DEMO_COLLECTION,
                                                 "image_sha256": [f"demo-drawing-{i}" for i in range(len(caps))]})],
                      ignore_index=True)
    merged = JointData(items, np.vstack([data.image_features, *feats]), text.astype(np.float32), texts,
                       data.variants + [[row[t] for t in v] for v in per_item],
                       data.captions + [[row[t] for t in c.captions] for c in caps],
                       np.concatenate([data.groups, data.groups.max(initial=-1) + 1 + np.arange(len(caps))]),
                       data.skipped, data.item_captions + caps)
    return merged, np.concatenate([train, n0 + np.arange(len(caps))])


def _fit(data: JointData, train: np.ndarray, val: np.ndarray, options: JointOptions, epochs: int,
         reporter: Reporter = SILENT, on_epoch: Callable[[dict[str, Any]], None] | None = None):
    """Train the heads on `train` rows, early stopping on val t2i recall@10; (model, space, history,
    best_epoch, metrics before training). Masked variants are used when options.mask_p > 0, batches
    are random or within one collection (options.batching)."""
    torch = _torch()
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    model = _build_model(data.image_features.shape[1], data.text_features.shape[1], options)
    X = torch.from_numpy(data.image_features)
    T = torch.from_numpy(data.text_features)
    samples = data.variants if options.mask_p > 0 else data.captions
    train_text_rows = sorted({t for i in train for t in samples[i]})
    with torch.no_grad():
        model.image.fit_scaler(X[train])
        model.text.fit_scaler(T[train_text_rows])
    space = JointSpace(model, {"dim": options.dim})
    collections = data.items["collection"].to_numpy(dtype=str)

    def soft_targets(groups: np.ndarray, text_rows: np.ndarray):
        pos = (groups[:, None] == groups[None, :]) | (text_rows[:, None] == text_rows[None, :])
        t = torch.from_numpy(pos.astype(np.float32))
        return t / t.sum(1, keepdim=True), t.T / t.T.sum(1, keepdim=True)

    def batch_loss(rows: np.ndarray, text_rows: np.ndarray):
        img = model.image(X[rows])
        txt = model.text(T[text_rows])
        logits = model.scale() * img @ txt.T
        target_i, target_t = soft_targets(data.groups[rows], text_rows)
        lsm = torch.nn.functional.log_softmax
        return (-(target_i * lsm(logits, 1)).sum(1).mean() - (target_t * lsm(logits.T, 1)).sum(1).mean()) / 2

    def val_loss() -> float:
        model.eval()
        losses = []
        with torch.no_grad():
            for start in range(0, len(val), options.batch_size):
                rows = val[start : start + options.batch_size]
                if len(rows) > 1:
                    losses.append(batch_loss(rows, np.array([data.captions[r][0] for r in rows])).item())
        return float(np.mean(losses)) if losses else float("nan")

    before = _evaluate_rows(space, data, val)
    history: list[dict[str, Any]] = []
    best: tuple[float, float] = (before.get("t2i_r10", 0.0), -val_loss())
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    best_epoch, stale = 0, 0
    optimiser = torch.optim.AdamW(model.parameters(), lr=options.lr, weight_decay=options.weight_decay)
    advance = reporter.task("training joint space", epochs)
    for epoch in range(1, epochs + 1):
        model.train()
        batches = (collection_batches(collections, train, options.batch_size, rng) if options.batching == "collection"
                   else random_batches(train, options.batch_size, rng))
        losses = []
        for rows in batches:
            if len(rows) < 2:
                continue
            # One caption per item per epoch: a masked variant (or one of several human captions).
            text_rows = np.array([samples[r][rng.integers(len(samples[r]))] for r in rows])
            loss = batch_loss(rows, text_rows)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        metrics = _evaluate_rows(space, data, val, (1, 5, 10))
        record = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4) if losses else None,
                  "val_loss": round(val_loss(), 4), **{f"val_{k}": v for k, v in metrics.items()},
                  "temperature": round(space.temperature, 4)}
        history.append(record)
        score = (metrics.get("t2i_r10", 0.0), -record["val_loss"])
        if score > best:
            best, best_epoch, stale = score, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
        advance(1)
        if on_epoch:
            on_epoch(record)
        if stale >= options.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return model, space, history, best_epoch, before


def _partial_scores(workspace: Workspace, space: JointSpace, data: JointData, rows: np.ndarray,
                    text_ext: Extractor, seed: int = 0, max_per_size: int = 300) -> dict[str, Any]:
    """Pooled partial-attribute recall (1, 2, 3 attributes; curata.search.evaluate.partial_recall) over `rows`."""
    from curata.search.captions import partial_queries
    from curata.search.evaluate import embedding_ranker, partial_recall

    if len(rows) < 2 or not data.item_captions:
        return {}
    queries = partial_queries([data.item_captions[r] for r in rows], seed=seed, max_per_size=max_per_size)
    if not queries:
        return {}

    def embed(texts: list[str]) -> np.ndarray:
        return space.embed_texts(cached_text_features(workspace, text_ext, texts))

    return partial_recall(queries, embedding_ranker(embed, space.embed_images(data.image_features[rows])),
                          data.groups[rows])


def selection_score(full: dict[str, float], partial: dict[str, Any]) -> float:
    """What selection maximises: the mean of val text->image R@1 and R@10 on full captions and, where the
    items have attributes, on partial queries (1-3 attributes, any token holding them counts)."""
    parts = [full.get("t2i_r1", 0.0), full.get("t2i_r10", 0.0)]
    if partial.get("all"):
        parts += [partial["all"]["any_r1"], partial["all"]["any_r10"]]
    return round(float(np.mean(parts)), 4)


def _select(workspace: Workspace, items: pd.DataFrame, options: JointOptions, searched: list[str],
            prepare: Callable[[str], tuple], text_ext: Extractor, reporter: Reporter,
            on_candidate: Callable[[dict[str, Any]], None] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Choose the searched settings by validation (the training items' own val split, never the held-out
    collections): a coordinate search, one choice at a time in SEARCHABLE order, starting from the
    linear head without masking on random batches (so the linear head on the chosen features is always
    a candidate, and a setting is only kept where it beats what came before). Candidates train for at
    most `select_epochs`; once `budget_s` is spent the rest are skipped (the first always runs). The
    budget counts the candidates' training and scoring: the one-time work before it (features,
    caption vectors of every candidate's data and of the partial queries) is `prepare_seconds`."""
    started = time.perf_counter()
    pixel_art = None
    features = [options.image_features]
    if "features" in searched:
        from curata.features.pixels import looks_like_pixel_art

        pixel_art = looks_like_pixel_art(items, seed=options.seed)
        if pixel_art:  # EfficientNet, the pixels themselves, and both (per-block normalised, concatenated)
            features = list(dict.fromkeys([options.image_features, *PIXEL_ART_FEATURES]))
        elif "pixels_onehot" in options.image_features.split("+"):  # pixels asked for, yet not pixel art
            features = [options.image_features, "effnet_lite0"]
    mask_alt = options.mask_p or 0.3
    stages = [("features", "image_features", features), ("head", "hidden", [0, options.hidden or 512]),
              ("masking", "mask_p", [0.0, mask_alt]), ("batching", "batching", ["random", "collection"])]
    current: dict[str, Any] = {"image_features": features[0],
                               "hidden": 0 if "head" in searched else options.hidden,
                               "mask_p": 0.0 if "masking" in searched else options.mask_p,
                               "batching": "random" if "batching" in searched else options.batching}
    epochs = min(options.select_epochs, options.epochs)
    from curata.search.captions import partial_queries

    for name in features:  # one-time work, outside the budget
        _, data, _, val, _ = prepare(name)
        queries = partial_queries([data.item_captions[r] for r in val], seed=options.seed, max_per_size=300)
        cached_text_features(workspace, text_ext, [q.text for q in queries], reporter)
    prepare_seconds = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    trials: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] | None = None
    for stage, key, values in stages:
        if stage not in searched:
            continue
        base = dict(best[1]) if best else dict(current)
        for value in values:
            config = {**base, key: value}
            if any(t["config"] == config for t in trials):
                continue
            record: dict[str, Any] = {"stage": stage, "config": config}
            _, data, train, val, _ = prepare(config["image_features"])
            if value == "collection" and len(set(data.items["collection"].iloc[train])) < 2:
                record["skipped"] = "one training collection: in-collection batches are the random ones"
            elif key == "mask_p" and value > 0 and not any(c.maskable for c in data.item_captions):
                record["skipped"] = "no attribute captions to mask"
            elif trials and time.perf_counter() - started > options.budget_s:
                record["skipped"] = f"time budget ({options.budget_s:g} s) spent"
            if "skipped" in record:
                trials.append(record)
                if on_candidate:
                    on_candidate(record)
                continue
            t0 = time.perf_counter()
            candidate = replace(options, **config)
            _, space, history, best_epoch, _ = _fit(data, train, val, candidate, epochs)
            full = _evaluate_rows(space, data, val, (1, 5, 10))
            partial = _partial_scores(workspace, space, data, val, text_ext, options.seed)
            score = selection_score(full, partial)
            record.update({"val": {k: full[k] for k in ("t2i_r1", "t2i_r5", "t2i_r10") if k in full},
                           "val_partial": partial.get("all", {}), "score": score, "epochs_run": len(history),
                           "best_epoch": best_epoch, "seconds": round(time.perf_counter() - t0, 1)})
            trials.append(record)
            if on_candidate:
                on_candidate(record)
            if best is None or score > best[0]:
                best = (score, config)
    assert best is not None  # the first candidate always runs
    for t in trials:
        t["chosen"] = t["config"] == best[1]
    fixed = {k: v for k, v in current.items()
             if {"image_features": "features", "hidden": "head", "mask_p": "masking", "batching": "batching"}[k]
             not in searched}
    summary = {"searched": searched, "fixed": fixed, "chosen": best[1], "score": "mean of val text->image R@1 and "
               "R@10 on full captions and on partial queries (1-3 attributes, any token holding them is a hit)",
               "pixel_art": pixel_art, "budget_s": options.budget_s, "select_epochs": epochs,
               "candidates": trials, "prepare_seconds": prepare_seconds,
               "seconds": round(time.perf_counter() - started, 1)}
    return best[1], summary


def train_joint(workspace: Workspace, options: JointOptions | None = None, *, items: pd.DataFrame | None = None,
                save: bool = True, reporter: Reporter = SILENT,
                on_epoch: Callable[[dict[str, Any]], None] | None = None,
                on_candidate: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train a joint space on the workspace's items; returns the summary (the card, plus `space`).

    With `options.select` (a subset of SEARCHABLE), those choices are first made by validation
    (`_select`: candidates trained for `select_epochs` within `budget_s`, the winner retrained for
    `epochs`); what was tried and chosen is the card's `selection`. `on_epoch` receives each epoch's
    {epoch, loss, val_loss, val_t2i_r10, ...} of the final training as it finishes; `on_candidate`
    each selection candidate's record.
    """
    options = options or JointOptions()
    options.validate()
    torch = _torch()
    started = time.perf_counter()
    items = workspace.items() if items is None else items
    if items.empty:
        raise ValueError(f"the workspace {workspace.root} has no items; ingest a collection first")
    missing = sorted(set(options.holdout) - set(items["collection"]))
    if missing:
        raise ValueError(f"held-out collection(s) not in the workspace: {', '.join(missing)}; "
                         f"collections: {', '.join(sorted(set(items['collection'])))}")
    if options.max_items and len(items) > options.max_items:
        items = items.sample(options.max_items, random_state=options.seed).sort_index()
    text_ext = shared_extractor(options.text_features)
    prepared: dict[str, tuple[Extractor, JointData, np.ndarray, np.ndarray, np.ndarray]] = {}
    searched = [s for s in SEARCHABLE if s in options.select]
    data_mask_p = options.mask_p if "masking" not in searched else (options.mask_p or 0.3)

    def prepare(image_features: str):
        """Data and split of one image extractor (loaded once, shared by every candidate using it)."""
        if image_features not in prepared:
            image_ext = shared_extractor(image_features)
            if image_ext.modality != "image" or text_ext.modality != "text":
                raise ValueError(f"need an image extractor and a text extractor, got {image_features} "
                                 f"({image_ext.modality}) and {options.text_features} ({text_ext.modality})")
            data = load_data(workspace, items, image_ext, text_ext, captions=options.captions, mask_p=data_mask_p,
                             variants=options.variants, seed=options.seed, reporter=reporter)
            if len(data.items) < 4:
                raise ValueError(f"only {len(data.items)} items have image features and a caption; need at least 4")
            train, val, held = split_items(data.items, options.val_fraction, options.seed, options.holdout)
            if options.pretrain_demo:
                data, train = _add_demo(workspace, data, train, image_ext, text_ext, options, reporter)
            prepared[image_features] = (image_ext, data, train, val, held)
        return prepared[image_features]

    selection: dict[str, Any] | None = None
    if searched:
        chosen, selection = _select(workspace, items, options, searched, prepare, text_ext, reporter, on_candidate)
        options = replace(options, **chosen)
    image_ext, data, train, val, held = prepare(options.image_features)
    model, space, history, best_epoch, before = _fit(data, train, val, options, options.epochs, reporter, on_epoch)
    train_probe = np.random.default_rng(options.seed).permutation(train)[:2000]  # an overfitting check
    val_partial = _partial_scores(workspace, space, data, val, text_ext, options.seed)

    name = options.name or "joint"
    collections = data.items["collection"].value_counts().to_dict()
    card: dict[str, Any] = {
        "kind": KIND,
        "task": KIND,
        "name": name,
        "encoders": {
            "image": {"extractor": image_ext.name, "key": image_ext.key, "dim": int(data.image_features.shape[1])},
            "text": {"extractor": text_ext.name, "key": text_ext.key, "dim": int(data.text_features.shape[1])},
        },
        "dim": options.dim,
        "temperature": round(space.temperature, 5),
        "metrics": {"val": _evaluate_rows(space, data, val), "val_untrained": before, "val_partial": val_partial,
                    "train": _evaluate_rows(space, data, np.sort(train_probe)),
                    "holdout": _evaluate_rows(space, data, held) if len(held) else {}},
        "training": {
            "items": len(data.items), "train": len(train), "val": len(val), "holdout": len(held),
            "holdout_collections": list(options.holdout), "collections": collections,
            "captions": len(data.texts), "skipped": data.skipped,
            "epochs_run": len(history), "best_epoch": best_epoch, "seconds": round(time.perf_counter() - started, 1),
            "masking": ("none" if options.mask_p == 0 else
                        f"each attribute dropped with p={options.mask_p}; {options.variants} masked variants per "
                        "item drawn once, one sampled per epoch"),
            "batching": options.batching,
            "history": history,
        },
        "selection": selection,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "versions": _versions(),
        "created": datetime.now(UTC).isoformat(timespec="microseconds"),
    }
    space.card = card
    if save:
        from curata.tasks.bundle import check_replaceable

        directory = workspace.dir("models") / name
        check_replaceable(directory)
        ids = data.items["id"].tolist()
        demo = DEMO_COLLECTION  # drawings rendered in memory are not workspace items
        split = {"train": [ids[i] for i in train if data.items["collection"].iat[i] != demo],
                 "val": [ids[i] for i in val], "holdout": [ids[i] for i in held]}
        # Staged, then renamed into place: a crash or a full disk midway leaves the previous space whole.
        with replace_folder(directory) as tmp:
            torch.save(model.state_dict(), tmp / "heads.pt")
            card["fingerprint"] = hashlib.sha256((tmp / "heads.pt").read_bytes()).hexdigest()[:16]
            np.savez(tmp / HEADS_NPZ, **heads_npz_arrays(model))  # the torch-free copy JointSpace.load reads
            card["heads_npz"] = _file_digest(tmp / HEADS_NPZ)
            (tmp / "split.json").write_text(json.dumps(split), encoding="utf-8")
            (tmp / "card.json").write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
        space.directory = directory
        card["path"] = str(directory)
        # The training report: the card (selection candidates and choice, metrics, history) beside the others.
        card["report"] = str(workspace.write_report("joint-train", card))
    return {**card, "space": space}
