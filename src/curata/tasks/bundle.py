"""Model bundles: a folder with the fitted model and a `card.json` that says what it is.

    <bundle>/
      model.joblib   the fitted estimator (scikit-learn objects, or ours built from them)
      card.json      task, target, labels, features and their extractor keys, metrics,
                     training-data summary, library versions, creation time

A bundle needs nothing from the training data to load. Before predicting, `check_features` compares
the card's extractor keys with the extractors available now, so a bundle trained on other features
(another extractor version, other parameters) fails with a clear message instead of silently
predicting garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from curata import __version__
from curata.atomic import CURRENT, folder_view, replace_folder
from curata.features.engine import make_extractor
from curata.storage import is_remote

# What a bundle folder may hold (classifier or joint space): anything else is not ours to replace.
BUNDLE_FILES = {"card.json", "model.joblib", "extractors", "heads.pt", "heads.npz", "split.json"}
LIBRARIES = ("numpy", "scikit-learn", "torch", "onnxruntime", "sentence-transformers", "opencv-python-headless")


class BundleError(ValueError):
    """A bundle that cannot be loaded or used; the message says why."""


@dataclass
class Card:
    task: str
    target: str
    labels: list[str]
    features: dict[str, str]  # feature name -> extractor key it was trained on
    model: str
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _versions() -> dict[str, str]:
    out = {"curata": __version__, "python": platform.python_version()}
    for lib in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[lib] = metadata.version(lib)
    return out


def check_replaceable(directory: Path) -> None:
    """Refuse to replace a folder that is not a bundle (a bundle named `extractors` would wipe the fitted
    extractor state); replacing a bundle of either kind is fine."""
    files = folder_view(directory)  # on object storage: the published generation (none yet: nothing to replace)
    if files.is_dir() and not {p.name for p in files.iterdir()} <= BUNDLE_FILES:
        raise BundleError(f"{directory} exists and is not a model bundle; refusing to replace it (choose another "
                          "--name)")


def save_bundle(directory: Path, model: Any, card: Card, extractors: dict[str, Path] | None = None) -> Path:
    """Write the bundle in a staging folder renamed into place: a crash or a full disk midway leaves the
    previous bundle whole. `extractors`: fitted-state folders copied in as `extractors/<name>`."""
    check_replaceable(directory)
    card.versions = card.versions or _versions()
    card.created = card.created or datetime.now(UTC).isoformat(timespec="seconds")
    with replace_folder(directory) as tmp:
        import joblib  # here: reading a card (a search opening its joint space) must not pay its ~0.07 s

        joblib.dump(model, tmp / "model.joblib")
        for name, source in (extractors or {}).items():
            shutil.copytree(folder_view(source), tmp / "extractors" / name)
        (tmp / "card.json").write_text(json.dumps(card.to_dict(), indent=2, default=str), encoding="utf-8")
    return directory


def retrain_hint(card: Card, directory: Path) -> str:
    return (f"retrain it with `curata train {card.task} --target {card.target} --features "
            f"{','.join(card.features)} --name {directory.name}`")


def read_card_json(directory: Path, what: str = "a model bundle") -> Any:
    """The parsed `card.json` of a bundle folder (classifier or joint space); a missing or unreadable
    card is a BundleError naming the folder as not being `what`."""
    path = folder_view(directory) / "card.json"
    if not path.is_file():
        raise BundleError(f"{directory} is not {what} (no card.json)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise BundleError(f"{path} is not a valid model card: {e}; it is truncated or corrupt: retrain the model "
                          "(`curata train` or `curata joint train`)") from e


def newest_card(models: Path, match: Callable[[dict[str, Any]], bool]) -> tuple[Path, dict[str, Any], str] | None:
    """(folder, card, card digest) of the most recently created classifier bundle in `models` whose card
    `match`es (ties: the greater folder name), read with json alone: the search and review paths ask which
    bundle is newest without loading a model or importing the describe package."""
    found = []
    for folder, data in bundle_cards(models):
        try:
            card = json.loads(data)
        except ValueError:
            continue
        if isinstance(card, dict) and card.get("kind") != "joint_space" and match(card):
            digest = hashlib.sha256(data).hexdigest()[:16]
            found.append((str(card.get("created", "")), folder.name, folder, card, digest))
    if not found:
        return None
    _, _, folder, card, digest = max(found, key=lambda f: (f[0], f[1]))
    return folder, card, digest


def bundle_cards(models: Path) -> Iterator[tuple[Path, bytes]]:
    """(folder, card.json bytes) of every bundle in `models` (classifiers and joint spaces; unreadable cards
    are skipped). On object storage a bundle is a published folder (`atomic.folder_view`)."""
    if not models.is_dir():
        return
    if is_remote(models):
        folders = sorted({path.parent for path in models.glob(f"*/{CURRENT}")})
        cards = [(folder, folder_view(folder) / "card.json") for folder in folders]
    else:
        cards = [(path.parent, path) for path in sorted(models.glob("*/card.json"))]
    for folder, path in cards:
        try:
            yield folder, path.read_bytes()
        except OSError:
            continue


def load_card(directory: Path) -> Card:
    path = directory / "card.json"
    data = read_card_json(directory)
    if isinstance(data, dict) and data.get("kind") == "joint_space":
        raise BundleError(f"{directory} is a joint text-image space, not a classifier: use it with "
                          f"`curata search --model {directory.name}`")
    try:
        return Card(**data)
    except TypeError as e:
        raise BundleError(f"{path} is not a valid model card: {e}") from e


def load_bundle(directory: Path) -> tuple[Any, Card]:
    card = load_card(directory)
    path = folder_view(directory) / "model.joblib"
    try:
        import joblib

        model = joblib.load(path)
    except FileNotFoundError as e:
        raise BundleError(f"{directory} has a card but no model.joblib; {retrain_hint(card, directory)}") from e
    except Exception as e:  # truncated (EOFError), corrupt (UnpicklingError...) or from incompatible code
        reason = (str(e).strip().splitlines() or [""])[0]
        raise BundleError(f"{path} cannot be loaded ({type(e).__name__}: {reason}); it is truncated or corrupt: "
                          f"{retrain_hint(card, directory)}") from e
    return model, card


def check_features(card: Card) -> None:
    """Fail clearly when the extractors available now differ from the ones the bundle was trained on."""
    for name, key in card.features.items():
        try:
            current = make_extractor(name).key
        except ValueError as e:
            raise BundleError(f"bundle needs feature '{name}', which is not available here: {e}") from e
        if current != key:
            raise BundleError(f"bundle was trained on {key} but this installation computes {current}; "
                              "retrain the bundle on the current features")
