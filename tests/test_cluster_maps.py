"""Maps (2-D embedding, PNG, self-contained HTML), assignments written back, and a whole workspace run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curata.cluster import embed_2d, interactive_map, plot_map, write_assignments
from curata.cluster.maps import thumbnail_sample
from curata.collection import Item, items_to_frame
from curata.workspace import Workspace


def colour_images(folder: Path, n_per: int = 6) -> tuple[list[str], np.ndarray]:
    """Small images in three colour families, each with its own noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths, labels = [], []
    for c, base in enumerate([(220, 30, 30), (30, 60, 220), (30, 200, 60)]):
        for i in range(n_per):
            arr = np.clip(np.array(base) + rng.integers(-25, 25, (40, 48, 3)), 0, 255).astype(np.uint8)
            path = folder / f"c{c}_{i}.png"
            Image.fromarray(arr).save(path)
            paths.append(str(path))
            labels.append(c)
    return paths, np.array(labels)


def test_embed_2d_methods() -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.1, (20, 10)) + 5, rng.normal(0, 0.1, (20, 10)) - 5])
    xy, used = embed_2d(x, "auto")
    assert used == "tsne" and xy.shape == (40, 2)
    xy, used = embed_2d(x, "pca")
    assert used == "pca" and xy.shape == (40, 2)
    # The two groups stay apart on the map.
    assert np.linalg.norm(xy[:20].mean(0) - xy[20:].mean(0)) > 3 * xy[:20].std(0).max()
    xy, used = embed_2d(x[:3], "tsne")
    assert used == "pca"  # too few items for t-SNE
    with pytest.raises(ValueError, match="unknown map method"):
        embed_2d(x, "mds")


def test_auto_map_switches_to_umap_then_pca_for_big_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    import curata.cluster.maps as maps

    calls: list[dict] = []

    class FakeUMAP:  # the real one spends 20-40 s compiling with numba in each fresh process
        def __init__(self, **params):
            calls.append(params)

        def fit_transform(self, x):
            return x[:, :2]

    monkeypatch.setattr(maps, "TSNE_LIMIT", 10)
    x = np.random.default_rng(0).normal(size=(30, 5))
    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    xy, used = embed_2d(x)
    assert used == "umap" and xy.shape == (30, 2)
    assert calls[-1]["n_components"] == 2 and calls[-1]["n_neighbors"] == 15  # maps keep UMAP's default
    monkeypatch.setitem(sys.modules, "umap", None)
    assert embed_2d(x)[1] == "pca"


def test_png_map(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    xy = np.random.default_rng(0).normal(size=(30, 2))
    path = plot_map(xy, [0] * 10 + [1] * 10 + [-1] * 10, tmp_path / "m.png", {0: "red things", 1: "blue things"})
    assert path.read_bytes()[:4] == b"\x89PNG"
    with Image.open(path) as im:
        assert im.size[0] > 400


def test_interactive_html_is_self_contained_with_thumbnails(tmp_path: Path) -> None:
    paths, labels = colour_images(tmp_path / "img")
    paths[0] = str(tmp_path / "missing.png")  # an unreadable image just has no thumbnail
    xy = np.random.default_rng(0).normal(size=(len(paths), 2))
    texts = [f"item {i} </script><script>alert(1)</script>" for i in range(len(paths))]
    info = interactive_map(xy, labels, [f"id{i}" for i in range(len(paths))], tmp_path / "map.html",
                           names={0: "reds", 1: "blues", 2: "greens"}, images=paths, texts=texts)
    page = Path(info["path"]).read_text(encoding="utf-8")
    assert info["thumbnails"] == len(paths) - 1
    # No external resource of any kind: no URL, no src/href pointing outside the page.
    assert not re.search(r"https?://|//cdn|\bsrc=\"(?!data:)|\bhref=", page)
    uris = re.findall(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", page)
    assert len(uris) == len(paths) - 1
    # Each thumbnail is a real JPEG of at most 64 px.
    import base64
    import io

    with Image.open(io.BytesIO(base64.b64decode(uris[0].split(",", 1)[1]))) as im:
        assert im.format == "JPEG" and max(im.size) <= 64
    # User text cannot close the data block: "</script>" inside it is escaped.
    assert page.count("</script>") == 2
    data = re.search(r'<script type="application/json" id="data">(.*?)</script>', page, re.S).group(1)
    payload = json.loads(data)
    assert payload["text"][1].startswith("item 1 </script>")
    assert {c["name"] for c in payload["clusters"]} == {"reds", "blues", "greens"}
    assert len(payload["x"]) == len(paths) and max(payload["x"]) == 1.0


def test_thumbnail_cap_keeps_every_cluster(tmp_path: Path) -> None:
    labels = np.array([0] * 990 + [1] * 10)
    rows = thumbnail_sample(labels, 50)
    assert len(rows) <= 50 and set(labels[rows]) == {0, 1}
    paths, small_labels = colour_images(tmp_path / "img", n_per=4)
    info = interactive_map(np.zeros((12, 2)), small_labels, [str(i) for i in range(12)], tmp_path / "m.html",
                           images=paths, max_thumbnails=3)
    assert info["thumbnails"] == 3 and info["thumbnail_cap_hit"]
    assert "thumbnails embedded for 3 of them (capped at 3" in (tmp_path / "m.html").read_text()


def test_write_assignments(tmp_path: Path) -> None:
    path = write_assignments(tmp_path, "run1", ["a", "b", "c"], [0, 1, 0], np.array([[0, 1], [2, 3], [4, 5.0]]))
    assert path == tmp_path / "clusters" / "run1.parquet"
    frame = pd.read_parquet(path)
    assert list(frame.columns) == ["id", "cluster", "x", "y"]
    assert frame["cluster"].tolist() == [0, 1, 0] and frame["y"].tolist() == [1, 3, 5]
    frame = pd.read_parquet(write_assignments(tmp_path, "run2", ["a"], [3]))
    assert frame["x"].isna().all()


def _workspace(tmp_path: Path) -> tuple[Workspace, np.ndarray]:
    """A workspace of 18 items with colour images, texts, tags and labels, and a fake cached feature."""
    paths, labels = colour_images(tmp_path / "img")
    words = ["tomato cherry strawberry", "ocean sky sapphire", "grass leaf forest"]
    items = [Item(id=f"s/{i}", source="s", collection="c", image=p, image_sha256=f"sha{i}",
                  text=f"a {words[c]} picture {i}", label=["red", "blue", "green"][c], tags=[f"hue={c}", "kind=art"])
             for i, (p, c) in enumerate(zip(paths, labels, strict=True))]
    ws = Workspace(tmp_path / "ws").create()
    ws.add_items(items_to_frame(items))
    from curata.features.engine import compute, make_extractor

    compute(make_extractor("color_stats"), ws)
    compute(make_extractor("palette"), ws)
    return ws, labels


def test_cluster_workspace_end_to_end(tmp_path: Path) -> None:
    from curata.cluster import cluster_workspace

    ws, _ = _workspace(tmp_path)
    summary = cluster_workspace(ws, ["color_stats"], "kmeans", k_range=(2, 6), max_thumbnails=5)
    assert summary["k"] == 3 and summary["scores"]["ari"] == pytest.approx(1.0)
    assert summary["target"] == "label" and summary["items"] == 18
    frame = pd.read_parquet(summary["files"]["assignments"])
    assert frame["id"].tolist() == [f"s/{i}" for i in range(18)]
    names = {c["name"] for c in summary["clusters"]}
    assert any("tomato" in n and "red" in n for n in names), names  # words + palette colour
    try:
        import matplotlib  # noqa: F401

        keys: tuple[str, ...] = ("k_curve", "map_png", "map_html", "summary")
    except ImportError:  # an optional dependency: PNGs are skipped with a note
        keys = ("map_html", "summary")
        assert summary["notes"]
    for key in keys:
        assert Path(summary["files"][key]).exists(), key
    saved = json.loads(Path(summary["files"]["summary"]).read_text())
    assert saved["run"] == "color_stats-kmeans" and saved["thumbnails"] == 5
    topic = cluster_workspace(ws, method="nmf", k=3, html=False, png=False)
    assert topic["scores"]["ari"] == pytest.approx(1.0)
    assert topic["run"] == "text-nmf-k3"
    with pytest.raises(ValueError, match="has not been computed"):
        cluster_workspace(ws, ["minilm"])
    with pytest.raises(ValueError, match="needs the number of topics"):
        cluster_workspace(ws, method="lda")
