"""A workspace on object storage (`-w s3://bucket/prefix`): a real S3-compatible server (moto, its own process on
loopback) holds the whole workspace, tables and files. Every stage runs on it and gives what a local workspace
gives; the lock is one holder at a time across processes and is taken over from a dead holder; a bundle write
that dies leaves the published bundle whole; journaled edits survive a kill; nothing is written to a local
folder named after the URI, and the credentials appear nowhere."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import SECRET, write_colour_table
from curata import storage
from curata.atomic import CURRENT, folder_view, replace_folder
from curata.storage import StorePath, lease
from curata.workspace import Workspace

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")
pytest.importorskip("obstore")

BUCKET = "curata-ws"


@pytest.fixture(scope="module")
def bucket(s3_env) -> str:
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}"


@pytest.fixture
def aws(s3_env, bucket, monkeypatch, tmp_path) -> str:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CURATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CURATA_FEATURE_CACHE", "off")
    monkeypatch.setattr(storage, "_stores", {})  # clients are per process and endpoint
    monkeypatch.chdir(tmp_path)  # a URI folded into a local path would appear here as `s3:/...`
    return bucket


def _cli(*args: str) -> dict | list:
    from typer.testing import CliRunner

    from curata.cli import app

    done = CliRunner().invoke(app, [*args, "--json"])
    assert done.exit_code == 0, (args, done.output[-2000:])
    assert SECRET not in done.output
    return json.loads(done.output)


def test_every_stage_on_a_bucket_gives_what_a_folder_gives(aws, tmp_path):
    table = write_colour_table(tmp_path / "images", 24, (24, 20), text=True)
    results = {}
    for where, ws in (("bucket", f"{aws}/stages"), ("folder", str(tmp_path / "local"))):
        _cli("ingest", str(table), "-w", ws)
        _cli("features", "-e", "color_stats", "-w", ws)
        _cli("train", "classify", "--target", "label", "--features", "color_stats", "--model", "logreg",
             "--name", "colours", "-w", ws)
        predicted = _cli("predict", "colours", "--all", "-w", ws)
        queues = _cli("review", "-w", ws)  # the queues' counts: reads the history and the newest bundles
        _cli("index", "build", "--model", "zeroshot", "-w", ws)
        found = _cli("search", "--text", "red", "--model", "zeroshot", "-k", "5", "-w", ws)
        item = predicted[0]["id"]
        edited = _cli("edit", item, "--label", "curated", "-w", ws)
        label_after_edit = Workspace(ws).items(["id", "label"]).set_index("id")["label"][item]
        _cli("undo", edited["batch"], "-w", ws)
        results[where] = {
            "vectors": Workspace(ws).items(["id"]).shape,
            "predicted": sorted((r["id"], r["prediction"]) for r in predicted),
            "found": [r["id"] for r in found["hits"]],
            "edited": label_after_edit,
            "label": Workspace(ws).items(["id", "label"]).set_index("id")["label"][item],
            "history": len(_cli("history", "-w", ws)),
            "queues": {queue: (counts["left"], counts["done"]) for queue, counts in queues.items()},
        }
    assert results["bucket"] == results["folder"]
    assert results["bucket"]["edited"] == "curated" and results["bucket"]["label"] != "curated"
    root = StorePath(f"{aws}/stages")
    names = {path.relative_to(root).parts[0] for path, _ in root.walk_files()}
    assert {"collection.lance", "features", "models", "index", "reports", "edits.lance"} <= names
    assert (root / "models" / "colours" / CURRENT).is_file()  # a published generation, not loose files
    assert not (tmp_path / "s3:").exists()
    written = "".join(path.read_text(errors="replace") for path, size in root.walk_files()
                      if path.suffix in (".json", ".html", ".jsonl") and size < 5_000_000)
    assert SECRET not in written


def test_a_bundle_write_that_dies_leaves_the_published_one(aws):
    directory = StorePath(f"{aws}/bundles/models/b")
    with replace_folder(directory) as tmp:
        (tmp / "card.json").write_text('{"v": 1}')
    with pytest.raises(RuntimeError), replace_folder(directory) as tmp:
        (tmp / "card.json").write_text('{"v": 2}')
        raise RuntimeError("killed mid-write")
    assert json.loads((folder_view(directory) / "card.json").read_text()) == {"v": 1}
    # A writer that died after uploading its generation, before publishing it: invisible, and deleted by the
    # next publish once abandoned (its name says when it started).
    abandoned = f"g{time.time_ns() - 2 * 3600 * 10**9}-0badc0de"
    (directory / abandoned / "card.json").write_text('{"v": "torn"}')
    assert json.loads((folder_view(directory) / "card.json").read_text()) == {"v": 1}
    with replace_folder(directory) as tmp:
        (tmp / "card.json").write_text('{"v": 3}')
    assert json.loads((folder_view(directory) / "card.json").read_text()) == {"v": 3}
    assert sorted(p.name for p in directory.iterdir()) == sorted([CURRENT, (directory / CURRENT).read_text()])


def _hold(uri: str, seconds: float, started: multiprocessing.Event) -> None:
    with lease(StorePath(uri)):
        started.set()
        time.sleep(seconds)


def test_the_lease_has_one_holder_and_outlives_a_dead_one(aws, s3_env):
    uri = f"{aws}/leases/.lock"
    context = multiprocessing.get_context("spawn")
    started = context.Event()
    holder = context.Process(target=_hold, args=(uri, 3.0, started))
    holder.start()
    assert started.wait(60)
    waited: list[bool] = []
    began = time.monotonic()
    with lease(StorePath(uri), on_wait=lambda: waited.append(True)):
        assert waited and time.monotonic() - began > 1.0  # held until the other process let go
    holder.join(30)
    # A holder killed while holding: its lease is taken over once it stopped refreshing it.
    started = context.Event()
    killed = context.Process(target=_hold, args=(uri, 60.0, started))
    killed.start()
    assert started.wait(60)
    killed.kill()
    killed.join()
    began = time.monotonic()
    with lease(StorePath(uri), lease_s=2.0):
        assert time.monotonic() - began < 30
    assert not StorePath(uri).exists()  # released


def test_journaled_edits_on_a_bucket_survive_a_kill_before_they_are_applied(aws, tmp_path):
    from curata.curation import Change, Curation, EditJob

    table = write_colour_table(tmp_path / "images", 6, (16, 16))
    ws = Workspace(f"{aws}/journal")
    _cli("ingest", str(table), "-w", str(ws.root))
    items = ws.items(["id", "label"])
    curation = Curation(ws)
    job = EditJob(ids=list(items["id"][:2]), changes=[Change("label", "set", "kept")], who="test")
    curation.apply_many([job], defer=True)  # journaled: one object, nothing applied yet
    journal = curation.journal
    assert journal.pending() and len(journal.waiting_entries()) == 1
    assert journal.rotate() and journal.applying.exists()  # moved aside, then "killed" before applying
    fresh = Workspace(f"{aws}/journal")  # the next reader applies it
    labels = fresh.items(["id", "label"]).set_index("id")["label"]
    assert list(labels[list(items["id"][:2])]) == ["kept", "kept"]
    assert not Curation(fresh).journal.pending()
    assert len(_cli("edits", "-w", str(ws.root))) == 2


@pytest.mark.slow
def test_ray_workers_write_the_feature_table_in_the_bucket(aws, s3_env, tmp_path):
    """`features --engine ray` with the workspace in the bucket: the actors write their fragments and hash runs
    into it, the driver commits, and the vectors equal the local engine's on a local workspace."""
    import subprocess
    import sys

    from curata.features.engine import load_matrix, make_extractor

    table = write_colour_table(tmp_path / "images", 24, (20, 16))
    env = {**os.environ, **s3_env, "RAY_AUTH_MODE": "disabled", "CURATA_FEATURE_CACHE": "off",
           "CURATA_CACHE": str(tmp_path / "cache")}
    remote, local = f"{aws}/ray", str(tmp_path / "local")
    for ws, engine in ((remote, ["--engine", "ray", "--ray-cpus", "2"]), (local, [])):
        for args in (["ingest", str(table), "-w", ws, "-q"],
                     ["features", "-e", "color_stats", "-w", ws, "-q", *engine]):
            done = subprocess.run([sys.executable, "-m", "curata.cli", *args], env=env, capture_output=True,
                                  text=True, timeout=300, check=False, cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-2000:]
            assert SECRET not in done.stdout + done.stderr
    matrices = {}
    for ws in (remote, local):
        workspace = Workspace(ws)
        ids = list(workspace.items(["id"])["id"])
        matrix, errors = load_matrix(workspace, make_extractor("color_stats"))
        assert not any(errors)
        matrices[ws] = (ids, matrix)
    assert matrices[remote][0] == matrices[local][0]
    np.testing.assert_allclose(matrices[remote][1], matrices[local][1], rtol=1e-6)
    runs = list(StorePath(f"{remote}/features").glob("*/hashes/run-*.npy"))
    assert runs and not (tmp_path / "s3:").exists()
    # A bundle published in the bucket, predicted by Ray actors, the parts written to the bucket too.
    for args in (["train", "classify", "--features", "color_stats", "--model", "logreg", "--name", "c",
                  "-w", remote],
                 ["predict", "c", "--all", "--engine", "ray", "--ray-cpus", "2", "--output", f"{aws}/predictions",
                  "-w", remote]):
        done = subprocess.run([sys.executable, "-m", "curata.cli", *args], env=env, capture_output=True,
                              text=True, timeout=300, check=False, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    parts = [str(p) for p in StorePath(f"{aws}/predictions").glob("part-*.parquet")]
    predicted = pd.concat([pd.read_parquet(io.BytesIO(StorePath(p).read_bytes())) for p in parts])
    assert sorted(predicted["id"]) == sorted(matrices[remote][0]) and predicted["error"].isna().all()


@pytest.mark.slow
def test_the_service_serves_and_edits_a_bucket_workspace(aws, s3_env, tmp_path):
    """`curata serve -w s3://…`: items, a thumbnail, a search and edits through the writer; the server killed
    right after answering the edits, the next reader has every one of them."""
    import signal

    import httpx

    from test_service_support import Server

    table = write_colour_table(tmp_path / "images", 9, (20, 16), text=True)
    ws = f"{aws}/served"
    _cli("ingest", str(table), "-w", ws)
    _cli("index", "build", "--model", "zeroshot", "-w", ws)
    server = Server(ws, "--allow-writes", env={**s3_env, "CURATA_CACHE": str(tmp_path / "cache")},
                    log=tmp_path / "server.log").wait()
    try:
        listed = httpx.get(f"{server.url}/v1/items", params={"limit": 50}, timeout=30).json()
        assert listed["total"] == 9
        first = listed["items"][0]["id"]
        thumb = httpx.get(f"{server.url}/v1/item/thumbnail", params={"id": first, "size": 32}, timeout=30)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        found = httpx.get(f"{server.url}/v1/search/text", params={"q": "red", "k": 3}, timeout=60)
        assert found.status_code == 200 and len(found.json()["results"]) == 3
        for n in range(3):
            done = httpx.post(f"{server.url}/v1/edits", headers={"X-Curata-Client": "test"}, timeout=30,
                              json={"ids": [first], "changes": {"add_tags": [f"served-{n}"]}})
            assert done.status_code == 200, done.text
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
    finally:
        server.stop()
    tags = Workspace(ws).items(["id", "tags"]).set_index("id")["tags"][first]
    assert {"served-0", "served-1", "served-2"} <= set(tags)
    assert SECRET not in (tmp_path / "server.log").read_text(errors="replace")


def test_downloaded_images_are_kept_as_objects_of_the_bucket_workspace(aws, tmp_path):
    """A URL list ingested into a bucket workspace: each downloaded image becomes an object under the
    workspace's `cache/images/`, and the item points at it (so any node reads it), not at this machine's file."""
    import functools
    import http.server
    import threading

    from conftest import write_image

    served = tmp_path / "served"
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        write_image(served / f"p{i}.png", color=colour)
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # stderr is the CLI's output under CliRunner
            pass

    handler = functools.partial(Quiet, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        urls = tmp_path / "urls.txt"
        urls.write_text("".join(f"http://127.0.0.1:{server.server_address[1]}/p{i}.png\n" for i in range(3)))
        ws = f"{aws}/downloads"
        _cli("ingest", str(urls), "-w", ws)
    finally:
        server.shutdown()
        server.server_close()
    images = sorted(Workspace(ws).items(["image"])["image"])
    assert len(images) == 3 and all(image.startswith(f"{ws}/cache/images/") for image in images)
    assert sorted(StorePath(image).read_bytes() for image in images) == \
        sorted((served / f"p{i}.png").read_bytes() for i in range(3))
    _cli("features", "-e", "color_stats", "-w", ws)  # read back from the bucket


def test_two_processes_ingesting_into_one_bucket_workspace_lose_nothing(aws, s3_env, tmp_path):
    """Two `curata ingest` processes at once, each with its own table, into the same bucket workspace: the
    lease makes their commits take turns, so the collection holds both tables' items."""
    import subprocess
    import sys

    env = {**os.environ, **s3_env, "CURATA_CACHE": str(tmp_path / "cache")}
    tables = [write_colour_table(tmp_path / f"part{n}", 8, (12 + n, 10)) for n in range(2)]
    ws = f"{aws}/concurrent"
    runs = [subprocess.Popen([sys.executable, "-m", "curata.cli", "ingest", str(table), "--source-name", f"p{n}",
                              "-w", ws, "-q"], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
            for n, table in enumerate(tables)]
    for run in runs:
        assert run.wait(120) == 0, run.stderr.read()[-2000:]
    ids = set(Workspace(ws).items(["id"])["id"])
    assert len(ids) == 16 and {i.split("/")[0] for i in ids} == {"p0", "p1"}
    assert not StorePath(f"{ws}/.lock").exists()  # released by both


def test_store_paths_name_like_paths_and_never_become_local_ones():
    """The names of a StorePath follow PurePosixPath's; one handed to a local-only call (open, os.fspath) is a
    TypeError, never a local folder named `s3:`."""
    from curata.storage import is_uri, location

    root = location("s3://bucket/ws/")
    assert isinstance(root, StorePath) and str(root) == "s3://bucket/ws" and root.key == "ws"
    bundle = root / "models" / "m1"
    assert (bundle.name, bundle.parent, bundle.parent.parent.parent) == ("m1", root / "models", StorePath("s3://bucket"))
    assert (root / "a.tar.gz").suffix == ".gz" and (root / "card.json").with_name("x.json") == root / "x.json"
    assert (root / "a" / "b").relative_to(root).as_posix() == "a/b"
    assert is_uri("gs://b/p") and is_uri("az://c/p") and not is_uri("/tmp/x") and not is_uri("file:///tmp/x")
    assert isinstance(location("/tmp/x"), Path) and isinstance(location(Path("rel")), Path)
    with pytest.raises(TypeError):
        open(root / "x.json")  # noqa: SIM115 - the call must fail before opening anything
    with pytest.raises(TypeError):
        os.fspath(root)


def test_a_damaged_feature_table_in_the_bucket_is_repaired_by_the_next_run(aws, tmp_path):
    """A fragment of the bucket's feature table overwritten with garbage: a reader names it, the next `features`
    run drops it,
    rewrites the table in place (a bucket cannot rename a folder) and computes those items again."""
    from curata.features.engine import load_matrix, make_extractor

    table = write_colour_table(tmp_path / "images", 6, (16, 16))
    ws = f"{aws}/damaged"
    _cli("ingest", str(table), "-w", ws)
    _cli("features", "-e", "color_stats", "-w", ws)
    before, _ = load_matrix(Workspace(ws), make_extractor("color_stats"))
    fragments = list(StorePath(f"{ws}/features").glob("*/vectors.lance/data/*.lance"))
    assert fragments
    fragments[0].write_bytes(b"garbage" * 20)
    from curata.features.store import CorruptPart

    with pytest.raises(CorruptPart, match="damaged fragment"):  # a reader names the table and the fix
        load_matrix(Workspace(ws), make_extractor("color_stats"))
    (run,) = _cli("features", "-e", "color_stats", "-w", ws)
    assert run["computed"] == 6 and any("damaged" in note for note in run["notes"])
    after, errors = load_matrix(Workspace(ws), make_extractor("color_stats"))
    assert not any(errors)
    np.testing.assert_allclose(after, before, rtol=1e-6)
