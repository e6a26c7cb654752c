"""The zero-label colour namer names the object, not the studio backdrop: on pictures the tests draw (white,
grey gradient with a shadow, transparency, full-bleed colour, odd file modes), and one answer for `describe`
and POST /v1/colours."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from curata.evaluate.colour_names import colour_word, score_namer
from curata.features.colour_names import name_colours
from curata.features.foreground import split_foreground
from curata.imageio import load_image

RED, BLACK, BLUE, GREEN = (200, 25, 30), (22, 22, 24), (30, 60, 200), (30, 150, 50)


def studio(colour, size=(240, 200), backdrop=(255, 255, 255), shadow=False, gradient=False) -> np.ndarray:
    """A shirt-like object (body and sleeves) on a backdrop, shaded a little, edges anti-aliased."""
    h, w = size
    yy = np.linspace(0, 1, h)[:, None, None]
    image = np.broadcast_to(np.array(backdrop, float), (h, w, 3)).copy()
    if gradient:  # darker at the top, lighter at the floor
        image = image * (0.8 + 0.2 * yy)
    mask = np.zeros((2 * h, 2 * w), np.uint8)
    cv2.rectangle(mask, (int(0.7 * w), int(0.5 * h)), (int(1.3 * w), int(1.6 * h)), 255, -1)  # body
    cv2.fillPoly(mask, [np.array([(0.7 * w, 0.5 * h), (0.4 * w, 0.8 * h), (0.55 * w, 0.95 * h), (0.7 * w, 0.8 * h),
                                  (1.3 * w, 0.8 * h), (1.45 * w, 0.95 * h), (1.6 * w, 0.8 * h), (1.3 * w, 0.5 * h)],
                                 np.int32)], 255)  # sleeves
    m = cv2.resize(mask, (w, h), interpolation=cv2.INTER_AREA).astype(float)[..., None] / 255
    if shadow:  # a soft shadow on the floor under the object
        s = np.zeros((h, w), np.float32)
        cv2.ellipse(s, (w // 2, int(0.8 * h)), (int(0.35 * w), int(0.05 * h)), 0, 0, 360, 1.0, -1)
        image *= 1 - 0.3 * cv2.GaussianBlur(s, (0, 0), 6)[..., None]
    paint = np.array(colour, float) * (0.9 + 0.15 * np.linspace(0, 1, w)[None, :, None])
    return np.clip(image * (1 - m) + paint * m, 0, 255).astype(np.uint8)


def encode(image: np.ndarray | Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, fmt, **kw)
    return buf.getvalue()


def test_object_on_white_is_named_and_the_backdrop_apart():
    named = name_colours(studio(RED))
    assert named.top == "red" and named.method == "border" and named.note is None
    assert named.background is not None and named.background.name == "white" and 0.5 < named.background.share < 0.9
    assert named.phrase == "red on white"
    assert abs(sum(c.share for c in named.object) - 1) < 0.01 and named.palette[0]["basic"] == "red"
    # The old namer (the whole picture) says white: the backdrop is most of it.
    assert name_colours(studio(RED), foreground=False).top == "white"


def test_black_object_on_white_is_black_not_white():
    jpeg = load_image(encode(studio(BLACK), "JPEG", quality=80))
    named = name_colours(jpeg)
    assert named.top == "black" and "white" not in [c.name for c in named.object[:1]]
    assert named.phrase.startswith("black") and named.phrase.endswith("on white")


def test_grey_gradient_with_a_soft_shadow():
    image = studio(BLUE, backdrop=(215, 215, 215), shadow=True, gradient=True)
    named = name_colours(image)
    assert named.top == "blue" and named.background is not None and named.background.name in ("gray", "white")
    split = split_foreground(image)
    # The shadow under the object is backdrop: the object's share is about the drawn shirt's (~0.3).
    assert split.method == "border" and 0.2 < split.mask.mean() < 0.4


def test_a_grey_object_on_a_grey_backdrop_stays_object():
    """Close in colour but with a sharp outline: the backdrop stops at the edge."""
    named = name_colours(studio((120, 120, 120), backdrop=(160, 160, 160)))
    assert named.top == "gray" and named.method == "border" and 0.2 < named.object_share < 0.4


def test_transparent_background_uses_alpha():
    rgba = np.zeros((120, 120, 4), np.uint8)
    rgba[..., :3] = 0  # what transparent pixels usually hold: black, which must not count
    rgba[30:90, 40:80] = (*GREEN, 255)
    named = name_colours(rgba)
    assert named.method == "alpha" and named.top == "green" and named.background is None
    assert [c.name for c in named.object] == ["green"]
    # Through the loader the transparency is composited on white: the border finds that backdrop.
    loaded = load_image(encode(Image.fromarray(rgba, "RGBA")))
    assert loaded.shape[2] == 3 and name_colours(loaded).top == "green"


def test_full_bleed_pictures_are_named_whole_and_say_so():
    flat = np.full((80, 80, 3), (220, 200, 30), np.uint8)
    named = name_colours(flat)
    assert named.top == "yellow" and named.method == "whole_image" and named.background is None and named.note
    white = name_colours(np.full((64, 64, 3), 250, np.uint8))
    assert white.top == "white" and white.method == "whole_image"
    # A coloured field with a small white shape: the field is the picture, not a studio backdrop.
    field = np.full((64, 64, 3), RED, np.uint8)
    field[24:40, 24:40] = 245
    named = name_colours(field)
    assert named.top == "red" and named.method == "whole_image" and "coloured field" in named.note
    # A full-bleed picture with no single border colour: named whole too.
    halves = np.zeros((64, 64, 3), np.uint8)
    halves[:, :32], halves[:, 32:] = BLUE, (240, 200, 20)
    assert name_colours(halves).method == "whole_image"


def test_palette_16_bit_and_cmyk_files_through_the_loader():
    image = studio(RED)
    palette_mode = Image.fromarray(image).quantize(64)
    assert name_colours(load_image(encode(palette_mode))).top == "red"
    grey16 = (studio((90, 90, 90)).mean(axis=2) * 257).astype(np.uint16)
    named = name_colours(load_image(encode(Image.fromarray(grey16))))
    assert named.top == "gray" and named.background is not None and named.background.name == "white"
    cmyk = Image.fromarray(studio(BLUE)).convert("CMYK")
    assert name_colours(load_image(encode(cmyk, "JPEG", quality=90))).top == "blue"


def test_css_vocabulary_and_bad_input():
    assert name_colours(studio(RED), vocabulary="css").top in ("firebrick", "crimson", "brown", "red")
    with pytest.raises(ValueError):
        name_colours(studio(RED), vocabulary="klingon")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        name_colours(np.zeros((0, 5, 3), np.uint8))


def test_colour_word_rule():
    assert colour_word("Acme Black Cotton Shirt. A shirt in black") == "black"
    assert colour_word("Grey mug") == "gray" and colour_word("a blackish tone") is None
    assert colour_word("Red and Blue towel") is None and colour_word("Multicolor Red print") is None
    assert colour_word(None) is None and colour_word("a plain towel") is None


def test_score_namer_counts_and_confusion():
    pairs = [(studio(RED), "red"), (studio(BLACK), "Black"), (studio(BLUE), "grey"), (studio(RED), None),
             (studio(GREEN), "silver")]
    result = score_namer(pairs)
    assert result["items"] == 5 and result["usable"] == 3 and result["unusable"] == 2
    assert result["correct"] == 2 and result["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert result["confusion"]["gray"] == {"blue": 1} and result["per_class"]["red"]["accuracy"] == 1.0
    assert result["white_over_non_white"] == 0
    old = score_namer(pairs, namer="whole_image")
    assert old["white_over_non_white"] == 3 and old["correct"] == 0


@pytest.fixture(scope="module")
def product_workspace(tmp_path_factory) -> Path:
    from curata.ingest.pipeline import IngestOptions, ingest
    from curata.ingest.table import ColumnMap
    from curata.workspace import Workspace

    root = tmp_path_factory.mktemp("colour-names")
    (root / "src").mkdir()
    pictures = {"black": studio(BLACK), "red": studio(RED, backdrop=(225, 225, 225), shadow=True, gradient=True),
                "blue": studio(BLUE, shadow=True)}
    for name, image in pictures.items():
        (root / "src" / f"{name}.jpg").write_bytes(encode(image, "JPEG", quality=85))
    pd.DataFrame({"id": list(pictures), "image": [f"{n}.jpg" for n in pictures], "label": list(pictures)}).to_csv(
        root / "src" / "labels.csv", index=False)
    ws = Workspace(root / "ws")
    ingest(root / "src", ws, IngestOptions(format="table", source_name="p", columns=ColumnMap()))
    return ws.root


@pytest.mark.slow  # the Describer embeds the items (effnet_lite0): ~10 s
def test_describe_and_the_service_agree(product_workspace):
    from fastapi.testclient import TestClient

    from curata.describe import DescribeOptions, Describer
    from curata.service.app import create_app
    from curata.service.settings import Settings
    from curata.workspace import Workspace

    ws = Workspace(product_workspace)
    names = ["black", "red", "blue"]
    described = Describer.open(ws, DescribeOptions(use_models=False)).describe_items([f"p/{n}" for n in names])
    files = [("files", (f"{n}.jpg", (product_workspace.parent / "src" / f"{n}.jpg").read_bytes(), "image/jpeg"))
             for n in names]
    with TestClient(create_app(Settings(workspace=ws.root, preload=False))) as client:
        got = client.post("/v1/colours", files=files)
        by_item = client.post("/v1/colours", json={"images": [{"item": f"p/{n}"} for n in names]})
    assert got.status_code == 200, got.text
    service = got.json()["results"]
    assert [r["colour"] for r in service] == [d["colours"][0]["name"] for d in described] == names
    assert [r["colour"] for r in by_item.json()["results"]] == names
    for row, desc in zip(service, described, strict=True):
        assert row["names"] == [{"name": c["name"], "share": c["share"]} for c in desc["colours"]]
        assert row["method"] == "border" and row["background"]["name"] in ("white", "gray")
        assert row["phrase"].startswith(row["colour"]) and row["note"] is None
    # The library scorer on the workspace reads the same images (labels as the target here).
    scored = score_namer(ws, "label")
    assert scored["usable"] == 3 and scored["accuracy"] == 1.0 and scored["target"] == "label"


def test_evaluate_colour_zero_label_scores_the_namer_from_the_cli(product_workspace):
    import json

    from typer.testing import CliRunner

    from curata.cli import app

    cli = CliRunner()
    done = cli.invoke(app, ["evaluate", "colour", "-w", str(product_workspace), "--model", "zero_label",
                            "--target", "label", "--json"])
    assert done.exit_code == 0, done.output
    scored = json.loads(done.stdout)
    assert scored["usable"] == 3 and scored["accuracy"] == 1.0 and scored["white_over_non_white"] == 0
    old = json.loads(cli.invoke(app, ["evaluate", "colour", "-w", str(product_workspace), "--model",
                                      "zero_label_whole_image", "--target", "label", "--json"]).stdout)
    assert old["white_over_non_white"] >= 1  # the backdrop named instead of the object
    table = cli.invoke(app, ["evaluate", "colour", "-w", str(product_workspace), "--model", "zero_label",
                             "--target", "label"])
    assert table.exit_code == 0 and "top-1 accuracy 1.000" in table.output
    none = cli.invoke(app, ["evaluate", "colour", "-w", str(product_workspace), "--model", "zero_label"])
    assert none.exit_code == 2 and "no item has a tag:color" in " ".join(none.output.split())
