"""Content words from the ImageNet head: the shipped WordNet vocabulary, the popularity prior, sentences
for photos, and the COCO evaluation's arithmetic, on logits and images the tests make themselves."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from curata.budget import ENV
from curata.cli import app
from curata.describe import DescribeOptions, Describer
from curata.describe.content import (
    ContentWords,
    coco_matrix,
    features_to_logits,
    has_traits,
    related,
)
from curata.describe.evaluate import _at_k, evaluate_content_words, is_coco_tagged, rank_coco, rank_fusion
from curata.describe.keywords import Keyword
from curata.describe.sentence import make_sentence
from curata.describe.vocabulary import COCO_CATEGORIES, imagenet_words
from curata.features.efficientnet import EfficientNetLite0, calibration_images
from curata.features.engine import compute, load_matrix, make_extractor
from curata.ingest.pipeline import IngestOptions, ingest
from curata.ingest.table import ColumnMap
from curata.workspace import Workspace

WORDS = imagenet_words()


def index_of(word: str) -> int:
    return next(i for i, row in enumerate(WORDS) if row["word"] == word)


def test_vocabulary_is_readable_and_maps_to_coco():
    wnids = [r["wnid"] for r in WORDS]
    assert len(set(wnids)) == 1000 and wnids == sorted(wnids)  # ImageNet-1k is in wnid order
    assert wnids[0] == "n01440764" and wnids[879] == "n04507155"  # tench; the umbrella, not a formation
    assert WORDS[281]["word"] == "tabby cat" and WORDS[281]["general"] == "cat" and WORDS[281]["coco"] == "cat"
    assert WORDS[0]["word"] == "tench"  # never the Latin binomial "Tinca tinca"
    assert WORDS[index_of("golden retriever")]["general"] == "dog"
    assert {r["coco"] for r in WORDS} - {""} <= set(COCO_CATEGORIES)
    assert sum(r["coco"] == "dog" for r in WORDS) > 100  # every breed is a COCO dog
    assert WORDS[index_of("jersey")]["coco"] == "person"  # clothes are worn by people
    assert WORDS[21]["word"] == "kite" and WORDS[21]["coco"] == "bird"  # the bird kite is no toy kite
    # A COCO category that is two WordNet senses: ImageNet's dining table is the table laid for a meal, its soup
    # and mixing bowls are serving dishes, and both map (they did not when one sense was looked up).
    assert WORDS[index_of("dining table")]["coco"] == WORDS[index_of("desk")]["coco"] == "dining table"
    assert WORDS[index_of("soup bowl")]["coco"] == WORDS[index_of("mixing bowl")]["coco"] == "bowl"
    assert coco_matrix().sum() == sum(bool(r["coco"]) for r in WORDS)
    assert related("golden retriever", "dog") and related("Persian cat", "cat") and not related("dog", "sofa")


def test_popularity_prior_demotes_a_class_predicted_for_every_item():
    rng = np.random.default_rng(0)
    velvet, retriever = index_of("velvet"), index_of("golden retriever")
    # Each reference item shows something of its own, and the head also says "velvet" of every one.
    reference = rng.normal(0, 1, (50, 1000))
    reference[np.arange(50), rng.integers(0, 1000, 50)] += 9.0
    reference[:, velvet] += 9.0
    query = rng.normal(0, 1, (1, 1000))
    query[0, velvet] += 9.0
    query[0, retriever] += 7.5  # ... and this one item shows a dog
    raw = ContentWords(mode="none")
    assert raw.keywords(query)[0][0].keyword == "velvet"
    for mode in ("divide", "subtract"):
        q = ContentWords.fit(reference, mode=mode).probabilities(query)[0]
        assert q[retriever] > q[velvet], mode  # raw: velvet above the retriever
        assert q[velvet] < 0.5 * raw.probabilities(query)[0, velvet], mode
    words = [k.keyword for k in ContentWords.fit(reference, mode="subtract").keywords(query)[0]]
    assert words[:2] == ["dog", "golden retriever"] and "velvet" not in words
    # Divided: an item that shows only what every item shows has nothing left to say.
    common = rng.normal(0, 1, (1, 1000))
    common[0, velvet] += 9.0
    assert ContentWords(mode="none").keywords(common)[0][0].keyword == "velvet"
    assert ContentWords.fit(reference).keywords(common)[0] == []
    # Divided, q stays a distribution; the prior of a tiny reference set is pulled towards uniform.
    assert ContentWords.fit(reference).probabilities(query).sum() == pytest.approx(1.0)
    assert ContentWords.fit(reference[:1]).prior[velvet] < ContentWords.fit(reference).prior[velvet]


def test_head_on_cached_features_equals_the_onnx_logits():
    images = calibration_images(3, 224, seed=3)
    features, logits = EfficientNetLite0().features_and_logits(images)
    assert np.allclose(features_to_logits(features), logits, atol=1e-3)


def test_sentences_for_photos_and_for_traits():
    colours = [("brown", 0.5), ("white", 0.3)]
    photo = [Keyword("dog", 0.8, "content"), Keyword("golden retriever", 0.6, "content"),
             Keyword("brown", 0.5, "colour"), Keyword("sofa", 0.4, "neighbours", "sofa"),
             Keyword("living", 0.4, "text")]
    assert make_sentence(colours, None, photo) == "A picture of a dog and a sofa, mostly brown and white."
    assert make_sentence([("blue", 0.9)], "Landscape", [Keyword("boat", 0.4, "content")]) == \
        "A Landscape showing a boat, in blue."
    # An item with traits keeps its trait sentence even when a content word is among its keywords.
    traits = [Keyword("axe", 0.9, "tags", "arms=axe"), Keyword("dog", 0.5, "content")]
    assert make_sentence([("teal", 0.6)], "peasant", traits, content=True) == "A mostly teal peasant with axe arms."
    # A describer with content words but no word above the threshold falls back to the plain sentence.
    assert make_sentence(colours, None, [Keyword("brown", 0.5, "colour")], content=True) == \
        "A mostly brown and white image."
    assert has_traits([["hair=red"], ["eyes=blue", "x"], []]) and not has_traits([["dog", "sofa"], []])


def test_precision_at_k_and_rankings_on_a_hand_built_example():
    ranked = [["dog", "cat", "car", "person", "bus"], ["tv", "cup", "dog", "oven", "sink"]]
    truth = [{"dog", "person"}, {"bed"}]
    scores = _at_k(ranked, truth, 5)
    assert scores == {"precision@5": pytest.approx((2 / 5 + 0) / 2), "recall@5": pytest.approx((1 + 0) / 2),
                      "hit@5": 0.5}
    assert _at_k([["dog"] * 1], [{"dog"}], 1)["precision@1"] == 1.0
    row = np.zeros((1, len(COCO_CATEGORIES)))
    row[0, COCO_CATEGORIES.index("zebra")], row[0, COCO_CATEGORIES.index("cup")] = 0.5, 0.2
    assert rank_coco(row, 3) == [["zebra", "cup", "person"]]  # ties keep COCO's order
    # Reciprocal rank fusion: "b" is second in both lists, so it beats "a" and "c" (first in one only).
    assert rank_fusion([["a", "b", "x"], ["c", "b", "y"]], 1) == ["b"]
    assert is_coco_tagged([["dog", "person"], ["cup"]]) and not is_coco_tagged([["hair=red"]])


def photo_workspace(root, n: int, side: int, seed: int) -> Workspace:
    """Drawn photo-like images (gradients, grain, discs) without traits, half tagged with COCO names, ingested
    into `root / "ws"` with effnet_lite0 computed."""
    folder = root / "photos"
    folder.mkdir()
    lines = ["path,categories,text"]
    for i, image in enumerate(calibration_images(n, side, seed=seed)):
        Image.fromarray(image).save(folder / f"p{i:02d}.png")
        lines.append(f"p{i:02d}.png,{'dog;person' if i % 2 else 'cup;dining table'},drawing {i}")
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    ws = Workspace(root / "ws")
    ingest(folder, ws, IngestOptions(columns=ColumnMap(tags="categories")))
    compute(make_extractor("effnet_lite0"), ws)
    return ws


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Workspace:
    return photo_workspace(tmp_path_factory.mktemp("content"), 24, 160, seed=11)


@pytest.mark.slow
def test_describer_gives_photos_content_words(photos):
    describer = Describer.open(photos, DescribeOptions(content_prior="none"))
    assert "content" in describer.sources and "24 items" in describer.sources["content"]
    ids = photos.items()["id"].tolist()[:6]
    for row in describer.describe_items(ids, top_k=10):
        content = [k["keyword"] for k in row["keywords"] if "content" in k["source"].split("+")]
        assert content, row["keywords"]  # without a prior the head always says something
        assert row["sentence"].startswith("A picture of ") and row["sentence"].endswith(".")
        shown = [k["keyword"] for k in row["keywords"] if k["source"] not in ("colour", "text")]
        assert any(word in row["sentence"] for word in shown[:3])
    drawn = calibration_images(1, 128, seed=99)[0]  # not in the workspace
    assert describer.describe_images([drawn])[0]["sentence"].startswith("A picture of ")
    # Neighbours in another space: the content words still come from effnet_lite0, computed per image.
    other = Describer.open(photos, DescribeOptions(embedding="color_hist", content_prior="none"))
    first = describer.describe_items(ids[:1])[0]["keywords"]
    again = other.describe_items(ids[:1])[0]["keywords"]
    assert [k["keyword"] for k in again if k["source"] == "content"][:1] == \
        [k["keyword"] for k in first if k["source"] == "content"][:1]
    off = Describer.open(photos, DescribeOptions(content_words=False))
    assert "content" not in off.sources
    assert not any("content" in k["source"] for k in off.describe_items(ids[:1])[0]["keywords"])


@pytest.mark.slow
def test_content_evaluation_and_cli(photos):
    result = evaluate_content_words(photos, k=5, folds=3)
    sources = result["sources"]
    assert {"popularity baseline", "content words", "neighbours", "content + neighbours"} <= set(sources)
    assert sources["popularity baseline"]["precision@5"] == pytest.approx(2 / 5)  # both tag sets have 2
    assert result["protocol"]["precision ceiling@5"] == pytest.approx(2 / 5)
    for scores in sources.values():
        assert 0 <= scores["precision@5"] <= 0.4 + 1e-9 and 0 <= scores["hit@5"] <= 1
    runner = CliRunner()
    out = runner.invoke(app, ["describe", "--evaluate", "-w", str(photos.root), "--json"])
    assert out.exit_code == 0, out.output
    assert "content words" in json.loads(out.stdout)["sources"]
    bad = runner.invoke(app, ["describe", "--evaluate", "-w", str(photos.root), "--prior", "bogus"])
    assert bad.exit_code == 2


@pytest.mark.slow
def test_content_words_over_the_memory_budget_agree(photos, monkeypatch):
    """Past the memory budget the prior comes from a sample read by id: with every item in the sample
    it is the in-memory prior, and the words are the same."""
    ids = photos.items()["id"].tolist()[:3]
    dense = Describer.open(photos, DescribeOptions(content_prior="none"))
    monkeypatch.setenv(ENV, str(6 * 1280 * 4))  # 6 effnet_lite0 rows: the 24 photos are 4x over it
    small = Describer.open(photos, DescribeOptions(content_prior="none"))
    assert small.items is None and "24 items" in small.sources["content"]
    assert np.allclose(small.content.prior, dense.content.prior)
    for a, b in zip(dense.describe_items(ids), small.describe_items(ids), strict=True):
        assert [k["keyword"] for k in a["keywords"] if "content" in k["source"]] == \
            [k["keyword"] for k in b["keywords"] if "content" in k["source"]]


@pytest.mark.slow
def test_content_words_read_the_views_where_the_workspace_has_them(tmp_path):
    """`effnet_lite0_views`: each class's best probability over the whole image and its corner crops. Once a
    workspace has it, describe's content words, their prior and the COCO evaluation read it instead of the whole
    image's logits (reported beside them)."""
    from curata.describe.content import CONTENT_VIEWS, softmax

    ws = photo_workspace(tmp_path, 12, 200, seed=5)
    assert Describer.open(ws, DescribeOptions(content_prior="none")).content.embedding == "effnet_lite0"

    views, plain = make_extractor(CONTENT_VIEWS), EfficientNetLite0()
    image = calibration_images(1, 300, seed=8)[0]
    pooled = views.transform([views.prepare(image)])[0]
    assert pooled.shape == (1000,) and np.allclose(views.transform([image])[0], pooled, atol=1e-5)
    whole = softmax(plain.features_and_logits([plain.prepare(image)])[1])[0]
    assert np.all(np.exp(pooled) >= whole - 1e-5)  # the whole image is one of the views
    assert np.exp(pooled).sum() > 1.0  # and the crops see other things, more sure of them

    compute(views, ws)
    describer = Describer.open(ws, DescribeOptions(content_prior="none"))
    assert describer.content.embedding == CONTENT_VIEWS and CONTENT_VIEWS in describer.sources["content"]
    item = ws.items().iloc[0]
    stored = load_matrix(ws, views, ws.items().iloc[[0]])[0]
    expected = [k.keyword for k in describer.content.keywords(stored, 10)[0]]
    got = [k["keyword"] for k in describer.describe_items([item["id"]], top_k=10)[0]["keywords"]
           if k["source"] == "content"]
    assert got and got == [w for w in expected if w in got][:len(got)]
    assert describer.describe_images([image])[0]["sentence"].startswith("A picture of ")  # views of an upload
    result = evaluate_content_words(ws, k=5, folds=3)
    assert result["protocol"]["embedding"] == CONTENT_VIEWS
    assert {"content words", "content words, whole image only"} <= set(result["sources"])
