"""The cached `object_palette` feature names what /v1/colours names: equal to `name_colours` on drawn images
(object on white, black on white, transparency, full bleed), and the service's item detail, colour facet and
filter read it where it was computed, falling back to the whole-image `palette` where it was not."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from curata.features.colour_names import name_colours, read_object_palette
from curata.features.engine import make_extractor
from curata.features.object_palette import (
    colour_names_of,
    is_object_palette,
    object_colour_names,
    object_names,
)
from curata.imageio import load_image

WHITE = (255, 255, 255)


def on_backdrop(colour: tuple[int, int, int], backdrop=WHITE, size=(200, 240), seed: int = 0) -> np.ndarray:
    """A shaded, anti-aliased ellipse covering ~15% of a backdrop (so the whole-image palette says the backdrop)."""
    h, w = size
    image = np.broadcast_to(np.array(backdrop, float), (h, w, 3)).copy()
    mask = np.zeros((2 * h, 2 * w), np.uint8)
    cv2.ellipse(mask, (w, h), (int(0.45 * w), int(0.35 * h)), 20, 0, 360, 255, -1)
    m = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA).astype(float)[..., None] / 255
    paint = np.array(colour, float) * (0.9 + 0.15 * np.linspace(0, 1, w)[None, :, None])
    noise = np.random.default_rng(seed).normal(0, 2, (h, w, 1))
    return np.clip(image * (1 - m) + paint * m + noise, 0, 255).astype(np.uint8)


def transparent(colour: tuple[int, int, int]) -> np.ndarray:
    rgba = np.zeros((120, 160, 4), np.uint8)
    rgba[30:90, 40:120] = (*colour, 255)
    return rgba


def full_bleed() -> np.ndarray:
    image = np.empty((96, 128, 3), np.uint8)
    image[:, :70] = (30, 60, 200)
    image[:, 70:] = (235, 210, 30)
    return image


DRAWN = {
    "red on white": on_backdrop((200, 25, 30)),
    "black on white": on_backdrop((22, 22, 24)),
    "transparent": transparent((30, 150, 50)),
    "full bleed": full_bleed(),
    "big": np.kron(on_backdrop((30, 60, 200)), np.ones((4, 4, 1), np.uint8)),  # shrunk by `prepare`
}


@pytest.mark.parametrize("name", list(DRAWN))
def test_the_cached_vector_names_what_name_colours_names(name):
    image = DRAWN[name]
    extractor = make_extractor("object_palette")
    vector = extractor.transform([extractor.prepare(image)])[0]
    assert vector.dtype == np.float32 and vector.shape == (extractor.dim,) == (26,)
    named = name_colours(image)
    cached = read_object_palette(vector)
    assert cached.top == named.top and named.top is not None
    assert object_colour_names(vector) == [(c.name, c.share) for c in named.object]
    # All but the note (the split's reason, text that is not cached) is the same.
    assert {**cached.to_dict(), "note": None} == {**named.to_dict(), "note": None}
    assert cached.palette == named.palette
    assert read_object_palette(vector, "css").top == name_colours(image, vocabulary="css").top


def test_drawn_images_are_named_as_expected_and_unlike_the_whole_image_palette():
    top = {name: name_colours(image).top for name, image in DRAWN.items()}
    assert top == {"red on white": "red", "black on white": "black", "transparent": "green",
                   "full bleed": "blue", "big": "blue"}
    assert name_colours(DRAWN["black on white"]).phrase == "black on white"
    palette = make_extractor("palette")
    assert colour_names_of(palette.transform([DRAWN["black on white"]])[0])[0][0] == "white"  # the backdrop wins


def test_reading_in_bulk_equals_reading_one_by_one_and_zeros_name_nothing():
    extractor = make_extractor("object_palette")
    matrix = extractor.transform([extractor.prepare(im) for im in DRAWN.values()])
    matrix = np.vstack([matrix, np.zeros((1, extractor.dim), np.float32)])
    for vocabulary in ("basic", "css"):
        assert object_names(matrix, vocabulary) == [object_colour_names(v, vocabulary) for v in matrix]
    assert object_names(matrix)[-1] == [] and read_object_palette(matrix[-1]).top is None
    assert is_object_palette(26) and not is_object_palette(20) and is_object_palette(matrix)


def test_the_feature_is_registered_versioned_and_palette_is_unchanged():
    from curata.commands.features import DEFAULT_EXTRACTORS
    from curata.features.engine import available_extractors

    assert "object_palette" in available_extractors() and "object_palette" in DEFAULT_EXTRACTORS.split(",")
    assert make_extractor("object_palette").key == "object_palette@1[k=5]"
    assert make_extractor("object_palette", k=3).dim == 18
    assert make_extractor("palette").key == "palette@2[k=5]" and make_extractor("palette").dim == 20
    with pytest.raises(ValueError):
        make_extractor("object_palette", k=0)


def test_the_namer_clusters_and_search_read_object_palettes():
    from curata.cluster.naming import dominant_colours
    from curata.search.zeroshot import colour_names, colour_shares
    from curata.tasks.colour import ZeroLabelColourNamer

    extractor, palette = make_extractor("object_palette"), make_extractor("palette")
    images = [DRAWN["black on white"], DRAWN["red on white"]]
    objects = extractor.transform([extractor.prepare(im) for im in images])
    wholes = palette.transform(images)
    namer = ZeroLabelColourNamer()
    # The object palette where the blocks have it; the whole-image palette otherwise.
    assert list(namer.predict({"object_palette": objects, "palette": wholes})) == ["black", "red"]
    assert list(namer.predict({"palette": wholes})) == ["white", "white"]
    assert list(namer.predict(objects)) == ["black", "red"]  # a bare matrix: read by its width
    clusters = dominant_colours(objects, [0, 1])
    assert clusters[0][0][0] == "black" and clusters[1][0][0] == "red"
    shares = colour_shares(objects)
    assert colour_names()[int(shares[0].argmax())] == "black" and shares[0].sum() == pytest.approx(1, abs=1e-3)


def test_the_zeroshot_encoder_reads_object_palettes_only_when_asked_and_says_so_in_its_card():
    from curata.search.zeroshot import ZeroShotEncoder

    default, objects = ZeroShotEncoder(), ZeroShotEncoder(colour_feature="object_palette")
    # The default card is the one existing zeroshot indexes were built with; the object one differs.
    assert default.card["version"].endswith(" palette@2[k=5]") and "object_palette@1" in objects.card["version"]
    assert default.card["fingerprint"] != objects.card["fingerprint"]
    assert [e.name for e in objects.feature_extractors()] == ["effnet_lite0_logits", "object_palette"]
    with pytest.raises(ValueError, match="colour_feature"):
        ZeroShotEncoder(colour_feature="color_hist")


# The service ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Three pictures (black on white, red on white, green on transparency) ingested; palette computed."""
    from curata.features.engine import compute
    from curata.ingest.pipeline import IngestOptions, ingest
    from curata.workspace import Workspace

    root = tmp_path_factory.mktemp("object-palette")
    pictures = root / "pictures"
    pictures.mkdir()
    Image.fromarray(DRAWN["black on white"]).save(pictures / "black.png")
    Image.fromarray(DRAWN["red on white"]).save(pictures / "red.png")
    Image.fromarray(DRAWN["transparent"], "RGBA").save(pictures / "green.png")
    ws = Workspace(root / "ws")
    ingest(pictures, ws, IngestOptions(source_name="p", collection="p"))
    compute(make_extractor("palette"), ws, workers=1)
    return ws.root


def test_item_colours_agree_with_v1_colours_once_object_palette_is_computed(workspace):
    from fastapi.testclient import TestClient

    from curata.features.engine import compute
    from curata.service.app import create_app
    from curata.service.settings import Settings
    from curata.workspace import Workspace

    ws = Workspace(workspace)
    files = {stem: workspace.parent / "pictures" / f"{stem}.png" for stem in ("black", "red", "green")}
    with TestClient(create_app(Settings(workspace=workspace, preload=False))) as client:
        items = {Path(it["id"]).stem: it["id"] for it in client.get("/v1/items").json()["items"]}
        assert set(items) == set(files)
        upload = [("files", (f"{s}.png", files[s].read_bytes(), "image/png")) for s in files]
        said = client.post("/v1/colours", files=upload)
        assert said.status_code == 200, said.text
        service = {s: r for s, r in zip(files, said.json()["results"], strict=True)}
        assert {s: r["colour"] for s, r in service.items()} == {"black": "black", "red": "red", "green": "green"}
        # The same decode, named by the library, for the record.
        assert all(name_colours(load_image(files[s])).top == service[s]["colour"] for s in files)

        # Only the whole-image palette: the studio backdrop wins, and the detail says where it came from.
        before = client.get(f"/v1/items/{items['black']}").json()
        assert before["colour"] == "white" and before["colour_source"] == "palette"
        assert before["colours"][0]["name"] == "white" and before["phrase"] is None
        assert client.get("/v1/items/facets").json()["colours"] == {"white": 3}
        assert client.get("/v1/items", params={"colour": "black"}).json()["total"] == 0

        # object_palette computed while the service runs: detail, facet and filter switch, and agree.
        compute(make_extractor("object_palette"), ws, workers=1)
        for stem, item_id in items.items():
            detail = client.get(f"/v1/items/{item_id}").json()
            assert detail["colour_source"] == "object_palette"
            assert detail["colour"] == service[stem]["colour"] == detail["colours"][0]["name"], stem
            assert detail["colours"] == service[stem]["names"]
            assert detail["palette"] == service[stem]["palette"]
            assert detail["phrase"] == service[stem]["phrase"]
            assert detail["colour_method"] == service[stem]["method"]
        black = client.get(f"/v1/items/{items['black']}").json()
        assert black["background"]["name"] == "white" and black["phrase"] == "black on white"
        assert client.get("/v1/items/facets").json()["colours"] == {"black": 1, "red": 1, "green": 1}
        found = client.get("/v1/items", params={"colour": "black"}).json()
        assert [it["id"] for it in found["items"]] == [items["black"]] and found["items"][0]["colour"] == "black"


def test_an_item_without_an_object_palette_falls_back_to_its_palette(tmp_path):
    """object_palette stored for one item only: that item reads it, the other its whole-image palette."""
    from curata.features.engine import compute
    from curata.features.store import FeatureStore
    from curata.ingest.pipeline import IngestOptions, ingest
    from curata.service.catalog import ColourCache, ItemsView
    from curata.workspace import Workspace

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for stem in ("black", "red"):
        Image.fromarray(DRAWN[f"{stem} on white"]).save(pictures / f"{stem}.png")
    ws = Workspace(tmp_path / "ws")
    ingest(pictures, ws, IngestOptions(source_name="p", collection="p"))
    compute(make_extractor("palette"), ws, workers=1)
    items = ws.items().sort_values("id").reset_index(drop=True)  # black.png, red.png
    extractor = make_extractor("object_palette")
    black = items.iloc[0]
    vector = extractor.transform([extractor.prepare(load_image(pictures / "black.png"))])
    FeatureStore.for_extractor(ws.root / "features", extractor).append([black["image_sha256"]], vector, [None])
    view = ItemsView.open(ws, ColourCache())
    assert view.colour_source == "object_palette"
    assert view.colours_of(items) == ["black", "white"]  # the red one: no object palette, its palette's backdrop
    records = items.to_dict("records")
    assert [view.colour_vector(r)[0] for r in records] == ["object_palette", "palette"]  # type: ignore[index]
    assert view.colour_index().to_dict() == {black["id"]: "black", items.iloc[1]["id"]: "white"}
