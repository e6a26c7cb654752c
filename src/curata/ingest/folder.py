"""A folder of images, optionally one sub-folder per class (label = sub-folder name)."""

from __future__ import annotations

import os
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
    rather than skipped silently. Hidden files and OS droppings (.DS_Store, ._foo.png), dangling
    symbolic links, links to folders (not followed) and special files are not items: each gets a
    `skip` record, listed in the report as skipped. With `labels_from_subfolders` (default: when
    every image sits exactly one level down), the sub-folder name is the label.
    """
    if not root.is_dir():
        raise SourceError(f"not a folder: {root}")
    files, skipped = _walk(root)
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
    for path, code, reason in skipped:
        rel = path.relative_to(root).as_posix()
        yield RawRecord(ref=rel, local_id=rel, skip=(code, reason))


def _walk(root: Path) -> tuple[list[Path], list[tuple[Path, str, str]]]:
    """Regular files under `root`, and (path, code, reason) for each entry that is not one."""
    files: list[Path] = []
    skipped: list[tuple[Path, str, str]] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        # Hidden folders (.git, .ipynb_checkpoints, .thumbnails) hold copies or tool state: not walked.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in list(dirs):
            if (here / name).is_symlink():  # os.walk does not follow links to folders (nor did rglob)
                skipped.append((here / name, "symlinked_folder", "link to a folder, not followed: ingest its "
                                                                 "target as a source of its own"))
        for name in sorted(names):
            path = here / name
            if name.startswith(".") or name.lower() in IGNORED_NAMES:
                skipped.append((path, "hidden_file", "hidden or system file (OS metadata, not an item)"))
            elif path.is_symlink() and not path.exists():
                skipped.append((path, "dangling_symlink", f"symbolic link to a missing file: {os.readlink(path)}"))
            elif path.is_file():
                files.append(path)
            else:
                skipped.append((path, "not_a_file", "not a regular file (a FIFO, socket or device)"))
    return sorted(files), skipped
