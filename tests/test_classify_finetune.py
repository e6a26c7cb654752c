"""Fine-tuning as a `classify` candidate: the `image` block (the images themselves) through training, the
held-out protocol, `auto`, the bundle, `predict` on a workspace and on files, and the service — on drawn
images of four colours (the Lite0 trunk export is cached per machine, as for the other image tests)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import Recorder, write_colour_table, write_image
from curata.cli import app
from curata.features.engine import compute, load_matrix, make_extractor
from curata.features.raw_image import MAX_SIDE, load_raw, shrink
from curata.ingest.pipeline import ingest
from curata.tasks.bundle import load_bundle
from curata.tasks.runner import TrainOptions, predict_images, predict_workspace, run
from curata.workspace import Workspace
from test_service_support import Server


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    """60 drawn images of 4 colours with a train / val / test column, and their colour statistics."""
    root = tmp_path_factory.mktemp("finetune-classify")
    write_colour_table(root, 60, (40, 36))
    workspace = Workspace(root / "ws")
    ingest(root / "items.csv", workspace)
    compute(make_extractor("color_stats"), workspace)
    return workspace


def test_the_image_block_is_paths_in_a_workspace_and_pixels_for_new_files(ws, tmp_path):
    items = ws.items()
    paths, errors = load_matrix(ws, make_extractor("image"), items)
    assert paths.dtype == object and all(Path(p).is_file() for p in paths) and errors == [None] * len(items)
    big = np.zeros((1200, 900, 3), np.uint8)
    assert shrink(big).shape == (MAX_SIDE, 336, 3) and shrink(big[:50, :40]).shape == (50, 40, 3)
    path = write_image(tmp_path / "wide.png", size=(1000, 500))
    assert load_raw(str(path)).shape == (224, MAX_SIDE, 3)  # a path and its pixels give the same input
    assert np.array_equal(load_raw(str(path)), load_raw(np.asarray(Image.open(path))))
    refused = CliRunner().invoke(app, ["features", "-w", str(ws.root), "-e", "image"])
    assert refused.exit_code == 2 and "it is the image itself" in " ".join(refused.output.split())


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def finetuned(ws, recorder):
    """`--model finetune` on the split column: chosen on val, scored once on test, saved as bundle "ft"."""
    return run(ws, TrainOptions(task="classify", model="finetune", use_split=True, name="ft"), reporter=recorder)


def test_fine_tuning_reports_its_progress_through_the_command_reporter(finetuned, recorder):
    # Three fits (val, test, the saved model) of 36 / 48 / 48 images, each loading its images and predicting.
    assert recorder.tasks["fine-tune: loading images"] >= 36 + 48 + 48
    assert recorder.tasks["fine-tune: epochs"] >= 3 and recorder.tasks["fine-tune: refit on all"] >= 3
    assert recorder.tasks["fine-tune: predicting"] == 12 + 12  # the val and the test items, in chunks


def test_finetune_alone_held_out_then_predicts_from_the_bundle(ws, finetuned, tmp_path):
    result = finetuned
    assert result.protocol["features"] == {"image": "image@1"}  # --model finetune needs no vector block
    assert result.results[0].summary["accuracy"]["mean"] >= 0.9
    assert result.protocol["scored"] == {**result.protocol["scored"], "items": 12, "model": "finetune"}
    on_workspace = {row["id"]: row for row in predict_workspace(result.bundle, ws)}
    items = ws.items()
    truth = dict(zip(items["id"], items["label"], strict=True))
    assert np.mean([on_workspace[i]["prediction"] == truth[i] for i in truth]) >= 0.9
    # The same image as a file gives the same answer as from the workspace (same pixels, same bundle).
    first = items.iloc[0]
    as_file = predict_images(result.bundle, [Path(first["image"]), tmp_path / "missing.png"])
    assert as_file[0]["scores"] == on_workspace[first["id"]]["scores"]
    assert as_file[1]["error"].startswith("file not found")
    # The bundle carries the fine-tuned weights (pickled as arrays, the network rebuilt on load).
    task, card = load_bundle(result.bundle)
    assert card.model == "finetune" and task.estimator_.model_.best_epoch_ >= 1
    assert task.estimator_.model_.n_val_ == 0  # refitted on all it was given, for the early-stopped epochs
    again = task.predict({"image": items["image"].to_numpy(dtype=object)[:8]})
    assert list(again) == [on_workspace[i]["prediction"] for i in items["id"][:8]]


def test_auto_weighs_finetune_when_given_the_images_and_a_moved_file_is_left_out(ws, tmp_path):
    result = run(ws, TrainOptions(task="classify", features=["color_stats", "image"], holdout=0.2, name="ft-auto"))
    scores = result.protocol["auto"]["validation_accuracy"]
    assert set(scores) == {"logreg", "svm", "mlp", "finetune"}  # one vector block: no stacking
    assert list(result.protocol["features"]) == ["color_stats", "image"]
    # An image moved away after training: that item gets an error, every other item its prediction.
    items = ws.items()
    moved = Path(items["image"].iloc[3])
    aside = tmp_path / "aside.png"
    moved.rename(aside)
    try:
        rows = predict_workspace(result.bundle, ws)
    finally:
        aside.rename(moved)
    errors = [r for r in rows if "error" in r]
    assert [r["id"] for r in errors] == [items["id"].iloc[3]]
    assert errors[0]["error"] == f"image: image file missing: {moved}"  # the block and the reason
    assert sum("prediction" in r for r in rows) == len(items) - 1


def test_cli_finetune_errors_are_one_clear_line(ws):
    cli = CliRunner()
    opened = cli.invoke(app, ["evaluate", "classify", "-w", str(ws.root), "--features", "image", "--open-set"])
    assert opened.exit_code == 2 and "add one beside 'image'" in " ".join(opened.output.split())
    missing = cli.invoke(app, ["evaluate", "classify", "-w", str(ws.root), "--features", "color_stats",
                               "--model", "finetune", "--folds", "2", "--json"])
    assert missing.exit_code == 0, missing.output  # --model finetune adds the image block it reads
    row = json.loads(missing.stdout)["table"][0]
    assert row["model"] == "finetune" and row["accuracy"] >= 0.9
    # An image damaged since ingest: one line naming the file and the reason, no trace.
    path = Path(ws.items()["image"].iloc[5])
    good = path.read_bytes()
    path.write_bytes(good[:100])
    try:
        broken = cli.invoke(app, ["train", "classify", "-w", str(ws.root), "--model", "finetune", "--folds", "2"])
    finally:
        path.write_bytes(good)
    said = " ".join(broken.output.split())
    assert broken.exit_code == 2 and f"{path}: cannot decode image" in said and "Traceback" not in said


def test_the_service_predicts_with_a_fine_tuned_bundle(ws, finetuned, tmp_path):
    server = Server(ws.root, log=tmp_path / "server.log").wait()
    try:
        with open(ws.items()["image"].iloc[2], "rb") as fh:  # a blue image
            data = fh.read()
        got = httpx.post(f"{server.url}/v1/predict/ft", files=[("files", ("x.png", data, "image/png"))],
                         timeout=60)
        assert got.status_code == 200, got.text
        assert got.json()["results"][0]["prediction"] == "blue"
    finally:
        server.stop()
