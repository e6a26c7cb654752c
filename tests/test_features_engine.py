"""The feature engine: caching by content hash, incremental runs, per-item error isolation, fitting."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from conftest import write_image
from curata.features.base import Extractor, ItemError
from curata.features.engine import compute, load_matrix
from curata.imageio import load_image
from curata.ingest.pipeline import ingest
from curata.workspace import Workspace


class MeanColour(Extractor):
    """Mean RGB; refuses images whose red mean is exactly 0 (to test per-item isolation)."""

    name = "test_mean"
    dim = 3
    calls = 0

    def transform(self, batch):
        MeanColour.calls += len(batch)
        out = np.stack([im.reshape(-1, 3).mean(0) for im in batch]).astype(np.float32)
        if any(v[0] == 0 for v in out):
            raise ItemError("no red at all")
        return out


class Vocabulary(Extractor):
    """A fitted text extractor: counts of the fitted vocabulary's words."""

    name = "test_vocab"
    modality = "text"
    needs_fit = True

    def __init__(self):
        self.words_: list[str] = []

    @property
    def dim(self) -> int:
        return 4

    def fit(self, inputs):
        counts: dict[str, int] = {}
        for text in inputs:
            for w in text.lower().split():
                counts[w] = counts.get(w, 0) + 1
        self.words_ = sorted(counts, key=lambda w: (-counts[w], w))[:4]
        return self

    def transform(self, batch):
        return np.array([[t.lower().split().count(w) for w in self.words_] + [0] * (4 - len(self.words_))
                         for t in batch], np.float32)

    def save(self, directory: Path) -> None:
        super().save(directory)
        (directory / "words.txt").write_text("\n".join(self.words_))

    def load(self, directory: Path):
        self.words_ = (directory / "words.txt").read_text().split("\n")
        return self


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    src = tmp_path / "src"
    for i in range(12):
        write_image(src / f"{i:02d}.png", color=(20 * i, 100, 30))
    write_image(src / "black.png", color=(0, 0, 0))  # noise is clipped: red mean stays > 0
    ws = Workspace(tmp_path / "ws")
    ingest(src, ws)
    return ws


def test_cache_incremental_and_isolation(workspace, tmp_path):
    items = workspace.items()
    first = compute(MeanColour(), workspace, batch_size=5)
    assert (first.items, first.computed, first.cached, first.errors) == (13, 13, 0, 0)
    # Vectors equal a direct computation through the shared loader, in item order.
    matrix, errors = load_matrix(workspace, MeanColour())
    expected = np.stack([load_image(p).reshape(-1, 3).mean(0) for p in items["image"]])
    np.testing.assert_allclose(matrix, expected, rtol=1e-5)
    assert errors == [None] * 13
    # A second run computes nothing.
    MeanColour.calls = 0
    again = compute(MeanColour(), workspace)
    assert (again.computed, again.cached, MeanColour.calls) == (0, 13, 0)
    # Ten new items: exactly ten computed; a pure-black image fails alone, the others in its batch succeed.
    more = tmp_path / "more"
    for i in range(9):
        write_image(more / f"m{i}.png", color=(255, 200 - 10 * i, 0))
    Path(more / "zero.png").parent.mkdir(exist_ok=True)
    from PIL import Image
    Image.new("RGB", (8, 8), (0, 50, 50)).save(more / "zero.png")
    ingest(more, workspace)
    MeanColour.calls = 0
    third = compute(MeanColour(), workspace, batch_size=32)
    assert (third.computed, third.cached, third.errors) == (10, 13, 1)
    _, errors = load_matrix(workspace, MeanColour())
    assert errors.count("no red at all") == 1


def test_unreadable_image_is_an_item_error_and_is_retried(workspace):
    items = workspace.items()
    path = Path(items["image"][0])
    original = path.read_bytes()
    path.write_bytes(b"garbage")
    run = compute(MeanColour(), workspace)
    assert run.errors == 1
    _, errors = load_matrix(workspace, MeanColour())
    assert "not a recognised image format" in errors[0]
    assert errors[1:] == [None] * 12
    # Failures are not cached: once the file is back, a rerun computes exactly that item.
    path.write_bytes(original)
    rerun = compute(MeanColour(), workspace)
    assert (rerun.computed, rerun.errors) == (1, 0)
    assert load_matrix(workspace, MeanColour())[1] == [None] * 13


def test_planning_reads_only_the_fragments_the_store_has_not_seen(workspace, tmp_path, monkeypatch):
    """After a clean run the store remembers the collection fragments it covers: the next plan reads only
    the others (new ingests, upserted rows, rows a rollback brings back), and a failed item keeps it
    reading from where it was, so the failure is retried."""
    from curata.collection import Collection
    from curata.features.engine import plan_compute

    read_rows: list[int] = []
    real_read = Collection.read

    def counting_read(self, columns=None, *args, **kwargs):
        frame = real_read(self, columns, *args, **kwargs)
        if columns == ["image", "image_sha256"]:
            read_rows.append(len(frame))
        return frame

    monkeypatch.setattr(Collection, "read", counting_read)
    assert compute(MeanColour(), workspace).computed == 13
    version = workspace.collection.version
    read_rows.clear()
    assert plan_compute(MeanColour(), workspace).todo == {} and read_rows == [0]  # nothing new: no row read
    more = tmp_path / "more"
    for i in range(3):
        write_image(more / f"n{i}.png", color=(200, 10 * i, 90))
    ingest(more, workspace)
    read_rows.clear()
    run = compute(MeanColour(), workspace)
    assert (run.items, run.cached, run.computed) == (16, 13, 3) and read_rows == [3]  # only the new fragment
    # A rollback brings back fragments this store has covered: nothing to read.
    workspace.collection.rollback(version)
    read_rows.clear()
    assert plan_compute(MeanColour(), workspace).todo == {} and read_rows == [0]
    # One that brings back fragments a store never covered: their rows are read and computed.
    class OtherMean(MeanColour):
        name = "test_other_mean"

    whole = workspace.collection.version
    workspace.replace_items(workspace.items().head(5))
    assert compute(OtherMean(), workspace).computed == 5
    workspace.collection.rollback(whole)
    read_rows.clear()
    back = compute(OtherMean(), workspace)
    assert (back.computed, back.cached) == (8, 5) and read_rows == [13]
    # A failure: the mark does not move, so the next plan reads the new rows again and retries it.
    from PIL import Image

    bad = tmp_path / "bad"
    bad.mkdir()
    Image.new("RGB", (8, 8), (0, 50, 50)).save(bad / "zero.png")  # MeanColour refuses red == 0
    ingest(bad, workspace)
    assert compute(MeanColour(), workspace).errors == 1
    read_rows.clear()
    again = compute(MeanColour(), workspace)
    assert again.computed == 1 and read_rows == [1]


def test_fitted_text_extractor_is_saved_reused_and_refit(workspace):
    items = workspace.items()
    assert (items["text"] == "").all()  # folder items have no text: all share one text hash
    run = compute(Vocabulary(), workspace)
    assert run.fitted and run.computed == 1 and run.cached == 0  # 13 items, one distinct text
    state = workspace.root / "models" / "extractors"
    assert any(state.rglob("fit.json"))
    again = compute(Vocabulary(), workspace)
    assert again.computed == 0
    refit = compute(Vocabulary(), workspace, refit=True)
    assert refit.computed == 0  # same inputs, same fit id: the cache stays valid


def test_load_matrix_before_fit_is_a_clear_error(workspace):
    with pytest.raises(ValueError, match="has not been fitted"):
        load_matrix(workspace, Vocabulary())


class ThreadSafeMean(MeanColour):
    """MeanColour that declares parallel batches and records the threads its copy ran on."""

    name = "test_mean_parallel"
    parallel_batches = True
    threads_seen: ClassVar[set[int]] = set()

    def single_threaded(self):
        return ThreadSafeMean()

    def transform(self, batch):
        import threading
        import time

        ThreadSafeMean.threads_seen.add(threading.get_ident())
        time.sleep(0.02)  # long enough for batches to overlap
        return super().transform(batch)


def test_parallel_batches_keep_order_and_isolation(workspace, monkeypatch):
    from PIL import Image

    import curata.features.engine as engine

    Image.new("RGB", (8, 8), (0, 50, 50)).save(Path(workspace.items()["image"][6]))  # fails alone
    monkeypatch.setattr(engine, "default_threads", lambda: 2)
    ThreadSafeMean.threads_seen = set()
    run = compute(ThreadSafeMean(), workspace, batch_size=2)
    assert (run.computed, run.errors) == (13, 1)
    assert len(ThreadSafeMean.threads_seen) == 2  # two batches at a time, on two model threads
    matrix, errors = load_matrix(workspace, ThreadSafeMean())
    for i, (path, row, error) in enumerate(zip(workspace.items()["image"], matrix, errors, strict=True)):
        if i == 6:
            assert error == "no red at all"
        else:  # every row in item order
            assert error is None
            np.testing.assert_allclose(row, load_image(path).reshape(-1, 3).mean(0), rtol=1e-5)
