"""Images on object storage: a real S3-compatible server (moto in server mode, its own process on loopback)
holds the images; a table lists them as s3:// URIs. Ingest keeps the URIs and hashes the objects' bytes, the
feature engines (local threads and Ray workers) read them with no local copy and give the vectors the same
images give from disk, the service serves them, a missing or broken object is one item's error, and the
credentials appear in nothing curata writes or prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import SECRET, write_image
from curata import objectstore
from curata.features.engine import compute, load_matrix, make_extractor
from curata.ingest.pipeline import ingest
from curata.workspace import Workspace
from test_service_support import Server

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

COLOURS = {"red": (200, 40, 40), "green": (40, 170, 60), "blue": (40, 60, 200)}


@pytest.fixture(scope="module")
def bucket(s3_env, tmp_path_factory) -> dict[str, Path]:
    """24 images drawn on disk and uploaded to s3://pictures/img/, one broken object, one listed but absent;
    the same images listed by local path in a second table (the reference)."""
    root = tmp_path_factory.mktemp("s3-images")
    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=SECRET)
    client.create_bucket(Bucket="pictures")
    remote, local = [], []
    for i in range(24):
        label = list(COLOURS)[i % 3]
        path = write_image(root / "img" / f"{label}_{i:02d}.png", size=(20 + i % 5, 16 + i % 7), color=COLOURS[label])
        client.put_object(Bucket="pictures", Key=f"img/{path.name}", Body=path.read_bytes())
        remote.append({"id": path.stem, "image": f"s3://pictures/img/{path.name}", "label": label})
        local.append({"id": path.stem, "image": str(path), "label": label})
    client.put_object(Bucket="pictures", Key="img/broken.png", Body=b"\x89PNG\r\n\x1a\n" + bytes(30))
    remote += [{"id": "broken", "image": "s3://pictures/img/broken.png", "label": "red"},
               {"id": "absent", "image": "s3://pictures/img/absent.png", "label": "red"}]
    pd.DataFrame(remote).to_csv(root / "remote.csv", index=False)
    pd.DataFrame(local).to_csv(root / "local.csv", index=False)
    return {"remote": root / "remote.csv", "local": root / "local.csv", "root": root}


@pytest.fixture
def aws(s3_env, monkeypatch) -> dict[str, str]:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(objectstore, "_filesystems", {})  # clients are per process and endpoint
    return s3_env


def _written_text(root: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in root.rglob("*") if p.is_file()
                     and p.suffix in (".json", ".jsonl", ".csv", ".txt", ".log"))


def test_ingest_and_features_read_objects_like_files(aws, bucket, tmp_path):
    remote_ws, local_ws = Workspace(tmp_path / "remote"), Workspace(tmp_path / "local")
    report = ingest(bucket["remote"], remote_ws)
    ingest(bucket["local"], local_ws)
    by_id = {e.id.split("/", 1)[1]: e for e in report.entries}
    assert sum(e.status == "ok" for e in report.entries) == 24
    assert by_id["absent"].code == "missing_file" and "s3://pictures/img/absent.png" in by_id["absent"].reason
    assert by_id["broken"].status == "error" and by_id["broken"].code in {"truncated", "corrupt", "not_an_image"}
    items = remote_ws.items(["id", "image", "image_sha256", "width", "height"]).sort_values("id", ignore_index=True)
    reference = local_ws.items(["id", "image", "image_sha256", "width", "height"]).sort_values("id", ignore_index=True)
    assert items["image"].str.startswith("s3://pictures/img/").all()  # kept as URIs: no local copy is made
    assert not (remote_ws.root / "cache").exists() or not any((remote_ws.root / "cache").rglob("*.png"))
    pd.testing.assert_frame_equal(items.drop(columns=["id", "image"]), reference.drop(columns=["id", "image"]))

    run = compute(make_extractor("color_stats"), remote_ws)
    assert (run.computed, run.errors) == (24, 0)
    compute(make_extractor("color_stats"), local_ws)
    got, errors = load_matrix(remote_ws, make_extractor("color_stats"))
    expected, _ = load_matrix(local_ws, make_extractor("color_stats"))
    order = np.argsort(remote_ws.items(["id"])["id"].to_numpy())
    np.testing.assert_allclose(got[order], expected[np.argsort(local_ws.items(["id"])["id"].to_numpy())], rtol=1e-6)
    assert errors == [None] * 24
    assert SECRET not in _written_text(remote_ws.root)


def test_an_object_deleted_after_ingest_is_one_items_error(aws, bucket, tmp_path):
    ws = Workspace(tmp_path / "ws")
    ingest(bucket["remote"], ws)
    client = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1")
    gone = "s3://pictures/img/red_00.png"
    data = client.get_object(Bucket="pictures", Key="img/red_00.png")["Body"].read()
    client.delete_object(Bucket="pictures", Key="img/red_00.png")
    try:
        run = compute(make_extractor("color_hist"), ws)
        assert run.errors == 1
        _, errors = load_matrix(ws, make_extractor("color_hist"))
        (error,) = [e for e in errors if e is not None]
        assert "red_00.png" in error and SECRET not in error
        assert not objectstore.exists(gone) and objectstore.exists("s3://pictures/img/red_03.png")
        with pytest.raises(FileNotFoundError, match=r"red_00\.png"):
            objectstore.read_bytes(gone)
    finally:
        client.put_object(Bucket="pictures", Key="img/red_00.png", Body=data)


def test_a_missing_bucket_is_one_items_error_that_does_not_show_the_credentials(aws, bucket, tmp_path):
    table = bucket["root"] / "elsewhere.csv"
    pd.DataFrame([{"id": "x", "image": "s3://no-such-bucket/x.png"}]).to_csv(table, index=False)
    report = ingest(table, Workspace(tmp_path / "ws"))
    (entry,) = report.entries
    assert entry.status == "error" and "s3://no-such-bucket/x.png" in entry.reason
    assert SECRET not in json.dumps(report.to_dict())


@pytest.mark.slow
def test_ray_workers_and_the_service_read_the_objects(s3_env, bucket, tmp_path):
    """The CLI in its own process with the AWS environment: Ray workers verify, compute and predict from the
    bucket (no shared filesystem needed), and the service serves an item's image and thumbnail from it."""
    env = {**os.environ, **s3_env, "RAY_AUTH_MODE": "disabled", "CURATA_FEATURE_CACHE": "off"}
    ws = tmp_path / "ws"

    def curata(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "curata.cli", *args], env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert SECRET not in done.stdout + done.stderr
        return done

    ingested = curata("ingest", str(bucket["remote"]), "-w", str(ws), "--engine", "ray", "--ray-cpus", "2", "--json")
    assert ingested.returncode == 0, ingested.stderr[-2000:]
    summary = json.loads(ingested.stdout)["summary"]
    assert (summary["ok"], summary["errors"], summary["engine"]) == (24, 2, "ray")
    features = curata("features", "-w", str(ws), "-e", "color_stats", "--engine", "ray", "--ray-cpus", "2", "--json")
    assert features.returncode == 0, features.stderr[-2000:]
    assert json.loads(features.stdout)[0]["computed"] == 24
    trained = curata("train", "classify", "--features", "color_stats", "--model", "logreg", "--name", "colours",
                     "-w", str(ws), "--json")
    assert trained.returncode == 0, trained.stderr[-2000:]
    uris = ["s3://pictures/img/blue_02.png", "s3://pictures/img/absent.png"]
    predicted = curata("predict", "colours", *uris, "-w", str(ws), "--engine", "ray", "--ray-cpus", "2", "--json")
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    rows = json.loads(predicted.stdout)
    assert [r["image"] for r in rows] == uris and rows[0]["prediction"] == "blue" and "absent.png" in rows[1]["error"]

    (item,) = Workspace(ws).items(["id"], where="image = 's3://pictures/img/red_00.png'")["id"]
    server = Server(ws, env=s3_env, log=tmp_path / "server.log").wait()
    try:
        image = httpx.get(f"{server.url}/v1/items/{item}/image", timeout=30)
        assert image.status_code == 200 and image.content == (bucket["root"] / "img" / "red_00.png").read_bytes()
        thumb = httpx.get(f"{server.url}/v1/items/{item}/thumbnail", params={"size": 64}, timeout=30)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    finally:
        server.stop()
    assert SECRET not in _written_text(ws) + (tmp_path / "server.log").read_text(errors="replace")


def test_predict_takes_object_uris(aws, bucket, tmp_path):
    """`curata predict BUNDLE s3://…`: the URIs reach the model as URIs (not folded into paths), a missing object
    is that row's error, and a colour model trained on the objects' features names the objects' colours."""
    from typer.testing import CliRunner

    from curata.cli import app

    ws = Workspace(tmp_path / "ws")
    ingest(bucket["remote"], ws)
    compute(make_extractor("color_stats"), ws)
    cli = CliRunner()
    trained = cli.invoke(app, ["train", "classify", "--features", "color_stats", "--model", "logreg", "--name",
                               "colours", "-w", str(ws.root), "--json"])
    assert trained.exit_code == 0, trained.output
    uris = ["s3://pictures/img/red_00.png", "s3://pictures/img/green_01.png", "s3://pictures/img/absent.png"]
    predicted = cli.invoke(app, ["predict", "colours", *uris, "-w", str(ws.root), "--json"])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    assert [r["image"] for r in rows] == uris
    assert [r.get("prediction") for r in rows[:2]] == ["red", "green"]
    assert "absent.png" in rows[2]["error"] and SECRET not in predicted.stdout
