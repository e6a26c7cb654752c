"""Near-duplicates: perceptual hashes with banded (multi-index) search, embeddings by cosine, grouping."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance

from curata.cluster import embedding_duplicates, hamming_pairs, image_duplicates, phash_groups, phash_image
from curata.cluster.duplicates import _bands, cosine_pairs, group_pairs, hamming_pairs_brute, phash_files


def drawing(seed: int, size: int = 96) -> Image.Image:
    """A distinct picture: a gradient background and a few random shapes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    c0, c1 = rng.uniform(0, 255, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None]
    im = Image.fromarray(np.clip(c0 * (1 - t) + c1 * t, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 20, 2)
        x1, y1 = x0 + rng.integers(15, 60), y0 + rng.integers(15, 60)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([int(x0), int(y0), int(x1), int(y1)], fill=fill)
    return im


def modified(im: Image.Image, how: str) -> Image.Image:
    if how == "jpeg":
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=50)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if how == "resize":
        return im.resize((im.width * 2 // 3, im.height * 2 // 3), Image.Resampling.BILINEAR)
    return ImageEnhance.Brightness(im).enhance(1.1)


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[str], dict[str, str]]:
    """50 distinct images plus 15 modified copies; returns ids, paths, copy id -> original id."""
    folder = tmp_path_factory.mktemp("dups")
    ids, paths, copies = [], [], {}
    for i in range(50):
        path = folder / f"img{i}.png"
        drawing(i).save(path)
        ids.append(f"img{i}")
        paths.append(str(path))
    for i, how in zip(range(0, 45, 3), ["jpeg", "resize", "brightness"] * 5, strict=True):
        path = folder / f"img{i}_{how}.jpg" if how == "jpeg" else folder / f"img{i}_{how}.png"
        modified(drawing(i), how).save(path)
        ids.append(path.stem)
        paths.append(str(path))
        copies[path.stem] = f"img{i}"
    return ids, paths, copies


def test_phash_matches_imagehash() -> None:
    imagehash = pytest.importorskip("imagehash")
    for seed in range(5):
        im = drawing(seed)
        assert phash_image(np.asarray(im)) == int(str(imagehash.phash(im)), 16)


def test_phash_groups_find_the_copies_and_only_them(collection) -> None:
    ids, paths, copies = collection
    found = image_duplicates(ids, paths, threshold=8)
    expected = sorted(sorted([orig, copy]) for copy, orig in copies.items())
    assert sorted(found.groups) == expected
    assert found.duplicates == 15 and found.items == 65
    assert all(s <= 8 for s in found.spread)
    assert found.to_dict()["groups"] == 15


def test_unreadable_images_are_skipped_not_fatal(collection, tmp_path: Path) -> None:
    ids, paths, _ = collection
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    found = image_duplicates([*ids[:3], "bad", "gone"], [*paths[:3], str(bad), str(tmp_path / "gone.png")])
    assert set(found.skipped) == {"bad", "gone"}
    assert found.groups == []  # two failed images (hash 0) must not look like duplicates of each other


def test_banded_search_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    # Near copies at every distance 0..12 so every threshold has pairs just inside and just outside.
    flips = [base[i] ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, i % 13, replace=False))) for i in range(300)]
    hashes = np.concatenate([base, np.array(flips, np.uint64), base[:5]])  # and exact duplicates
    for threshold in (0, 3, 8, 12):
        got = set(zip(*(a.tolist() for a in hamming_pairs(hashes, threshold)), strict=True))
        want = set(zip(*(a.tolist() for a in hamming_pairs_brute(hashes, threshold)), strict=True))
        assert got == want, threshold
        assert len(want) >= 300 * (threshold + 1) // 13
    assert sum(mask.bit_count() for _, mask in _bands(8)) == 64 and len(_bands(8)) == 9
    with pytest.raises(ValueError, match="Hamming threshold"):
        hamming_pairs(hashes, 40)


def test_banded_search_handles_a_huge_bucket() -> None:
    # 5000 identical hashes (blank images): all in one bucket, compared in blocks, one group.
    hashes = np.zeros(5000, np.uint64)
    hashes[-1] = np.uint64(2**64 - 1)
    groups = phash_groups([str(i) for i in range(5000)], hashes, 4)
    assert len(groups.groups) == 1 and len(groups.groups[0]) == 4999


def test_phash_files_parallel_matches_single(collection) -> None:
    _, paths, _ = collection
    hashes, errors = phash_files(paths[:10], workers=3)
    assert not errors
    from curata.imageio import load_image

    assert int(hashes[4]) == phash_image(load_image(paths[4], max_side=128))


@pytest.mark.parametrize("use_faiss", [True, False])
def test_embedding_groups(use_faiss: bool) -> None:
    if use_faiss:
        pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 32)).astype(np.float32)
    # Rows 200.. are slightly perturbed copies of rows 0, 10, 20, ...; row 0 has two copies.
    copies = x[::10] + rng.normal(0, 0.05, (20, 32)).astype(np.float32)
    extra = x[:1] * 3 + rng.normal(0, 0.05, (1, 32)).astype(np.float32)  # scale does not matter
    zero = np.zeros((2, 32), np.float32)  # no vector: never a duplicate, even of each other
    data = np.vstack([x, copies, extra, zero])
    ids = [f"v{i}" for i in range(len(data))]
    found = embedding_duplicates(ids, data, threshold=0.95, use_faiss=use_faiss)
    expected = sorted([sorted([f"v{10 * j}", f"v{200 + j}"] + (["v220"] if j == 0 else [])) for j in range(20)])
    assert sorted(sorted(g) for g in found.groups) == expected
    assert all(s >= 0.95 for s in found.spread)


def test_faiss_and_numpy_agree() -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    x[1500:1600] = x[:100] + rng.normal(0, 0.2, (100, 16)).astype(np.float32)
    a = cosine_pairs(x, 0.9, use_faiss=True)
    b = cosine_pairs(x, 0.9, use_faiss=False)
    assert set(zip(a[0].tolist(), a[1].tolist(), strict=True)) == set(zip(b[0].tolist(), b[1].tolist(), strict=True))
    assert len(a[0]) >= 100


def test_groups_are_connected_components() -> None:
    groups = group_pairs(7, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert [g.tolist() for g in groups] == [[0, 1, 2], [4, 5]]
    assert group_pairs(3, np.array([], int), np.array([], int)) == []


def test_bad_duplicate_input() -> None:
    with pytest.raises(ValueError, match="2 ids for 3 vectors"):
        embedding_duplicates(["a", "b"], np.eye(3))
    with pytest.raises(ValueError, match="cosine threshold"):
        cosine_pairs(np.eye(3), 1.5)
    with pytest.raises(ValueError, match="NaN"):
        cosine_pairs(np.array([[np.nan, 1.0]]), 0.9)


def test_duplicates_workspace_caches_hashes(collection, tmp_path: Path) -> None:
    import json

    from curata.cluster import duplicates_workspace
    from curata.collection import Item, items_to_frame
    from curata.workspace import Workspace

    ids, paths, copies = collection
    ws = Workspace(tmp_path / "ws").create()
    ws.add_items(items_to_frame([Item(id=i, source="s", collection="c", image=p, image_sha256=f"sha-{i}")
                                 for i, p in zip(ids, paths, strict=True)]))
    found = duplicates_workspace(ws, "phash")
    assert len(found.groups) == len(copies)
    cache = ws.root / "clusters" / "phash.parquet"
    assert cache.exists()
    before = cache.stat().st_mtime_ns
    again = duplicates_workspace(ws, "phash", threshold=0)  # served from the cache, stricter threshold
    assert cache.stat().st_mtime_ns == before
    assert len(again.groups) < len(found.groups)
    saved = json.loads((ws.root / "clusters" / "duplicates-phash.json").read_text())
    assert saved["threshold"] == 0 and saved["groups"] == len(again.groups)
    with pytest.raises(ValueError, match="unknown duplicate method"):
        duplicates_workspace(ws, "md5")


def test_blocked_similarity_search_equals_the_full_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    import curata.cluster.duplicates as module

    rng = np.random.default_rng(2)
    x = rng.normal(size=(1000, 8)).astype(np.float32)
    x[500:700] = x[:200] + rng.normal(0, 0.3, (200, 8)).astype(np.float32)
    monkeypatch.setattr(module, "_BLOCK", 128)  # many row and column blocks, ragged at the ends
    monkeypatch.setattr(module, "_COLUMNS", 300)
    i, j, s = cosine_pairs(x, 0.9)
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = z @ z.T
    wi, wj = np.nonzero(np.triu(full >= 0.9 - 1e-6, k=1))
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == set(zip(wi.tolist(), wj.tolist(), strict=True))
    assert np.allclose(s, full[i, j], atol=1e-5) and len(i) >= 150
