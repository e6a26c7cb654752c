"""A folder of images, optionally one sub-folder per class (label = sub-folder name)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from curata.ingest.records import RawRecord, SourceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".avif", ".ppm",
                  ".pgm"}
# Files that are clearly not meant to be items (they would otherwise be reported as "not an image").
IGNORED_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


def looks_like_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image_folder(root: Path, *, labels_from_subfolders: bool | None = None) -> Iterator[RawRecord]:
    """Yield one record per file under `root` (recursively).

    Files with an image suffix become items; other files are reported too (as `not_an_image`)
    rather than skipped silently, except hidden files and OS droppings. With
    `labels_from_subfolders` (default: when every image sits exactly one level down), the
    sub-folder name is the label.
    """
    if not root.is_dir():
        raise SourceError(f"not a folder: {root}")
    # Hidden folders count as hidden too (.git, .ipynb_checkpoints, .thumbnails): their files are
    # copies or tool state, not items.
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.name.lower() not in IGNORED_NAMES
    )
    if not any(looks_like_image(p) for p in files):
        raise SourceError(f"no image files found under {root}")
    if labels_from_subfolders is None:
        labels_from_subfolders = all(len(p.relative_to(root).parts) == 2 for p in files if looks_like_image(p))
    for path in files:
        rel = path.relative_to(root).as_posix()
        record = RawRecord(ref=rel, local_id=rel, image=str(path))
        if labels_from_subfolders and len(path.relative_to(root).parts) >= 2:
            record.label = path.relative_to(root).parts[0]
        if not looks_like_image(path):
            record.error = ("not_an_image", f"'{path.suffix or path.name}' is not an image file type")
        yield record
