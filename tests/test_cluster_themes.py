"""Tag themes: humanised tags, MiniLM and Word2Vec tag embeddings, theme naming, item mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from curata.cluster import humanise, tag_themes
from curata.cluster.themes import tag_vocabulary

GROUPS = {
    "vehicle": ["vehicle=car", "vehicle=automobile", "vehicle=truck", "vehicle=motorbike"],
    "weather": ["sky=rain", "sky=storm", "sky=thunder", "sky=drizzle"],
    "food": ["snack=pizza", "snack=burger", "snack=sandwich", "snack=fries"],
}


def test_humanise() -> None:
    assert humanise("hair=short_black") == "short black hair"
    assert humanise("Background=Light-Blue") == "Light Blue Background"
    assert humanise("smiling") == "smiling"
    assert humanise("mouth=") == "mouth"


def test_vocabulary_counts_items_not_repeats() -> None:
    tags = [["a", "a", "b"], ["b"], ["c"]]
    assert tag_vocabulary(tags) == ["b", "a", "c"]
    assert tag_vocabulary(tags, min_count=2) == ["b"]


@pytest.mark.slow
def test_minilm_themes_group_related_tags() -> None:
    # Traits stripped: grouping must come from the meaning of the words alone.
    vocab = [t.split("=")[1] for ts in GROUPS.values() for t in ts]
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(vocab))
    found = tag_themes(vocabulary=shuffled, n_themes=3, embedder="minilm")
    groups = sorted(sorted(t.tags) for t in found.themes)
    assert groups == sorted(sorted(t.split("=")[1] for t in ts) for ts in GROUPS.values())
    # k chosen by silhouette on the same vocabulary finds the same three themes.
    assert len(tag_themes(vocabulary=shuffled, embedder="minilm", k_range=(2, 6)).themes) == 3


@pytest.mark.slow
def test_minilm_themes_with_traits_are_named_by_trait_and_map_items() -> None:
    vocab = [t for ts in GROUPS.values() for t in ts]
    items = [["vehicle=car", "sky=rain"], ["snack=pizza"], ["unknown=tag"], []]
    found = tag_themes(items, vocabulary=vocab, n_themes=3)
    names = {t.name.split(":")[0] for t in found.themes}
    assert names == {"vehicle", "sky", "snack"}
    assert all(t.trait in GROUPS or t.trait in ("sky", "snack") for t in found.themes)
    by_trait = {t.trait: t.theme for t in found.themes}
    assert found.item_themes(items) == [sorted([by_trait["vehicle"], by_trait["sky"]]), [by_trait["snack"]], [], []]
    matrix = found.item_matrix(items)
    assert matrix.shape == (4, 3) and matrix.sum() == 3
    assert {t.trait: t.items for t in found.themes} == {"vehicle": 1, "sky": 1, "snack": 1}
    d = found.to_dict()
    assert d["embedder"] == "minilm" and len(d["themes"]) == 3


def test_word2vec_themes_follow_co_occurrence() -> None:
    # Two styles of item: tags of one style always appear together, never with the other's.
    rng = np.random.default_rng(0)
    a = ["bg=forest", "hat=leaf", "eyes=green", "cloak=moss"]
    b = ["bg=space", "hat=helmet", "eyes=visor", "cloak=suit"]
    items = [list(rng.choice(a, 3, replace=False)) for _ in range(60)] + \
            [list(rng.choice(b, 3, replace=False)) for _ in range(60)]
    found = tag_themes(items, embedder="word2vec", n_themes=2)
    assert sorted(sorted(t.tags) for t in found.themes) == sorted([sorted(a), sorted(b)])
    assert all(t.items == 60 for t in found.themes)


def test_theme_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 distinct tag"):
        tag_themes([["a"], ["b"]], embedder="word2vec")
    with pytest.raises(ValueError, match="give tag_lists"):
        tag_themes()
    with pytest.raises(ValueError, match="unknown tag embedder"):
        tag_themes([["a", "b", "c"]], embedder="glove")
    with pytest.raises(ValueError, match="cannot form 5 themes"):
        tag_themes([["a", "b", "c"]], embedder="word2vec", n_themes=5)
    with pytest.raises(ValueError, match="pass tag_lists"):
        tag_themes(vocabulary=["a", "b", "c"], embedder="word2vec")


def test_themes_workspace_writes_themes_and_item_mapping(tmp_path: Path) -> None:
    import pandas as pd

    from curata.cluster import themes_workspace
    from curata.collection import Item, items_to_frame
    from curata.workspace import Workspace

    a = ["bg=forest", "hat=leaf", "eyes=green"]
    b = ["bg=space", "hat=helmet", "eyes=visor"]
    ws = Workspace(tmp_path / "ws").create()
    ws.add_items(items_to_frame([Item(id=f"i{n}", source="s", collection="c", image="x.png", image_sha256=str(n),
                                      tags=a if n % 2 else b) for n in range(40)]))
    found = themes_workspace(ws, "word2vec", n_themes=2)
    assert sorted(sorted(t.tags) for t in found.themes) == sorted([sorted(a), sorted(b)])
    frame = pd.read_parquet(ws.root / "clusters" / "themes-word2vec.parquet")
    assert len(frame) == 40 and all(len(t) == 1 for t in frame["themes"])
    assert (ws.root / "clusters" / "themes-word2vec.json").exists()
