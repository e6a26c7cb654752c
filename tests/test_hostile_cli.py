"""The CLI and what it persists, under hostile conditions: kill -9 mid-write, a full disk, damaged derived
files, concurrent runs, odd entries in a source folder, a foreign table in place of the collection.

One small workspace (18 items of test_search's synthetic source, cheap `color_stats` features, a colour
bundle, a joint space on color_stats + MiniLM and its index) is built once; each test works on a copy.
Kills are real SIGKILLs of a `curata` subprocess, sent by the process itself at the worst moment: right
after the file that matters was written and cut to half its size (as if the kernel had written only part).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import write_image
from curata.atomic import replace_folder
from curata.cli import app
from curata.collection import SCHEMA
from curata.features.engine import compute, load_matrix, make_extractor
from curata.features.store import FeatureStore
from curata.ingest.pipeline import IngestOptions, ingest
from curata.ingest.table import ColumnMap
from curata.search.joint import JointOptions, load_joint, train_joint
from curata.search.searcher import Searcher, build_index
from curata.tasks.runner import TrainOptions, predict_workspace, run
from curata.workspace import Workspace
from test_cli import ENV, ok, one_line_error
from test_search import copy_workspace, make_source

TRAIN = ["train", "colour", "--target", "label", "--features", "color_stats", "--folds", "2", "--name", "colour"]
JOINT = dict(image_features="color_stats", text_features="minilm", dim=8, hidden=0, epochs=1, batch_size=8,
             variants=1, mask_p=0.0, val_fraction=0.25, name="joint")
JOINT_TRAIN = ["joint", "train", "--features", "color_stats,minilm", "--dim", "8", "--hidden", "0", "--epochs", "1",
               "--batch-size", "8", "--variants", "1", "--mask-p", "0", "--val-fraction", "0.25", "--name", "joint"]

# Runs `curata <args>` after patching: {"set": {"module:attr": value}, "slow": ["module:attr", seconds],
# "kill": ["module:attr", n]}: the n-th call of the killed function writes its file, cuts it to half its
# size (a Lance table: removes the version it committed, leaving its data files) and SIGKILLs the process;
# a slowed function sleeps first.
PATCHED = r"""
import importlib, json, os, signal, sys, time
spec = json.loads(sys.argv[1])

def patch(target, make):
    module, _, attr = target.partition(":")
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    setattr(owner, name, make(getattr(owner, name)))

for target, value in spec.get("set", {}).items():
    patch(target, lambda _old, value=value: value)
if "slow" in spec:
    def slow(real):
        def wrapper(*args, **kwargs):
            time.sleep(spec["slow"][1])
            return real(*args, **kwargs)
        return wrapper
    patch(spec["slow"][0], slow)
if "kill" in spec:
    calls = []
    def dying(real):
        def wrapper(*args, **kwargs):
            out = real(*args, **kwargs)
            calls.append(1)
            if len(calls) == spec["kill"][1]:
                if os.path.isdir(args[1]):  # a Lance table: undo the commit, as if killed just before it
                    versions = os.path.join(args[1], "_versions")
                    newest = min(n for n in os.listdir(versions) if n.endswith(".manifest"))  # names count down
                    os.remove(os.path.join(versions, newest))
                    hint = os.path.join(versions, "latest_version_hint.json")
                    if os.path.exists(hint):
                        os.remove(hint)
                else:
                    with open(args[1], "r+b") as fh:
                        fh.truncate(os.path.getsize(args[1]) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        return wrapper
    patch(spec["kill"][0], dying)
from curata.cli import app
from curata.collection import SCHEMA
sys.argv = ["curata", *sys.argv[2:]]
app()
"""


def patched(spec: dict, *args: str | Path) -> list[str]:
    return [sys.executable, "-c", PATCHED, json.dumps(spec), *map(str, args)]


def invoke(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a command in this process (no interpreter start-up), shaped like test_cli's subprocess results."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("hostile")
    ws = Workspace(root / "ws")
    table = make_source(root / "src", ["red", "green", "blue"], "shop")
    ingest(table, ws, IngestOptions(source_name="shop", columns=ColumnMap(tags="tags")))
    compute(make_extractor("color_stats"), ws)
    run(ws, TrainOptions(task="colour", target="label", features=["color_stats"], folds=2, name="colour"))
    train_joint(ws, JointOptions(**JOINT))
    build_index(ws, "joint")
    return ws


def searchable(ws: Workspace) -> None:
    assert Searcher.open(ws, "joint").by_text("a red circle", k=3)


def predicts(ws: Workspace) -> None:
    rows = predict_workspace(ws.root / "models" / "colour", ws)
    assert len(rows) == 18 and all("prediction" in r for r in rows)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# ---------------------------------------------------------------------------------------- 1. atomic bundles


def test_replace_folder_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "bundle"
    with replace_folder(target) as staged:
        (staged / "a").write_text("1")
    with pytest.raises(OSError), replace_folder(target) as staged:
        (staged / "a").write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert [p.name for p in target.iterdir()] == ["a"] and (target / "a").read_text() == "1"
    # A writer killed mid-write left its staging folder: the next writer removes it (its process is gone).
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / ".staging" / f"bundle.{int(dead.stdout)}-0123abcd"
    stale.mkdir(parents=True)
    with replace_folder(target) as staged:
        (staged / "b").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"] and [p.name for p in target.iterdir()] == ["b"]


def test_full_disk_during_train_keeps_the_previous_bundle(base, tmp_path, monkeypatch) -> None:
    ws = copy_workspace(base, tmp_path / "ws")
    before = (ws.root / "models" / "colour" / "model.joblib").read_bytes()

    def dump(value, filename, *args, **kwargs):
        Path(filename).write_bytes(before[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(joblib, "dump", dump)
    proc = invoke(*TRAIN, "-w", ws.root, "-q")
    one_line_error(proc, "error: no space left on device while writing", str(ws.root / "models" / "colour"),
                   "free space and rerun")
    assert (ws.root / "models" / "colour" / "model.joblib").read_bytes() == before
    predicts(ws)
    assert sorted(p.name for p in (ws.root / "models").iterdir()) == ["colour", "joint"]  # nothing staged left


def test_full_disk_during_joint_train_keeps_the_previous_space(base, tmp_path, monkeypatch) -> None:
    import torch

    ws = copy_workspace(base, tmp_path / "ws")
    before = (ws.root / "models" / "joint" / "heads.pt").read_bytes()

    def save(obj, f, *args, **kwargs):
        Path(f).write_bytes(before[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    one_line_error(invoke(*JOINT_TRAIN, "-w", ws.root, "-q"), "no space left on device while writing",
                   str(ws.root / "models" / "joint"))
    assert (ws.root / "models" / "joint" / "heads.pt").read_bytes() == before
    searchable(ws)


def test_failed_index_save_keeps_the_previous_index(base, tmp_path, monkeypatch) -> None:
    import faiss

    ws = copy_workspace(base, tmp_path / "ws")

    def write_index(index, fname):
        Path(fname).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", write_index)
    with pytest.raises(OSError, match="No space left"):
        build_index(ws, "joint")
    monkeypatch.undo()
    searchable(ws)
    assert sorted(p.name for p in (ws.root / "index").iterdir()) == ["joint"]


# ---------------------------------------------------------------------------------------- 7. kill -9


KILLS = {  # command -> (arguments, function killed right after it wrote its file, which call)
    "ingest": (["ingest", "{more}", "--source-name", "more"], "lance:write_dataset", 1),
    "features": (["features", "-e", "color_hist", "--batch-size", "4"], "lance:write_dataset", 2),
    "train": (TRAIN, "joblib:dump", 1),
    "joint train": (JOINT_TRAIN, "torch:save", 1),
    "index build": (["index", "build", "--model", "joint"], "faiss:write_index", 1),
}
SLOW_KILLS = ("train", "joint train", "index build")  # torch / ONNX start-up: several seconds each


@pytest.mark.parametrize("command", [pytest.param(c, marks=[pytest.mark.slow] if c in SLOW_KILLS else [])
                                     for c in KILLS])
def test_kill_9_while_writing_leaves_a_workspace_that_a_rerun_completes(base, tmp_path, command) -> None:
    ws = copy_workspace(base, tmp_path / "ws")
    args, target, call = KILLS[command]
    args = [a.format(more=make_source(tmp_path / "more", ["yellow"], "more")) for a in args]
    spec = {"kill": [target, call], "set": {"curata.features.engine:PART_SIZE": 4}}
    killed = subprocess.run(patched(spec, *args, "-w", ws.root), capture_output=True, text=True, env=ENV,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    # The workspace still opens, and what the killed command was replacing is whole.
    assert len(ws.items()) == 18
    color_hist = make_extractor("color_hist")
    if command == "features":  # the first part (4 items) was stored, the second never appeared
        assert [e is None for e in load_matrix(ws, color_hist)[1]].count(True) == 4
    elif command == "train":
        predicts(ws)
    elif command in ("joint train", "index build"):
        searchable(ws)
    result = json.loads(ok(invoke(*args, "-w", ws.root, "--json")).stdout)
    if command == "ingest":
        assert len(ws.items()) == 24 and result["summary"]["added"] == 6
    elif command == "features":
        assert (result[0]["cached"], result[0]["computed"]) == (4, 14)  # only what was lost is recomputed
        assert all(e is None for e in load_matrix(ws, color_hist)[1])
    elif command == "train":
        predicts(ws)
    elif command == "joint train":
        load_joint(ws)
    else:
        searchable(ws)
    assert not list(ws.root.rglob(".staging"))  # what the dead writer staged was cleaned up by the rerun


# ---------------------------------------------------------------------------------------- 2. repair by rerunning


@pytest.mark.parametrize("damaged", ["index.faiss", "items.parquet"])
def test_index_build_rebuilds_a_corrupt_index(base, tmp_path, damaged) -> None:
    ws = copy_workspace(base, tmp_path / "ws")
    (ws.root / "index" / "joint" / damaged).write_bytes(b"garbage" * 10)
    one_line_error(invoke("search", "--text", "a red circle", "-w", ws.root), "corrupt vector index",
                   str(ws.root / "index" / "joint"), "curata index build")
    built = json.loads(ok(invoke("index", "build", "--model", "joint", "-w", ws.root, "--json")).stdout)
    assert built["rebuilt"] and built["total"] == 18 and "rebuilt from scratch" in built["notes"][0]
    searchable(ws)


def test_features_names_a_damaged_fragment_and_a_rerun_recomputes_it(base, tmp_path) -> None:
    ws = copy_workspace(base, tmp_path / "ws")
    [table] = (ws.root / "features").glob("color_stats*/vectors.lance")
    for data in (table / "data").glob("*.lance"):
        data.write_bytes(b"not lance at all")
    one_line_error(invoke(*TRAIN[:-1], "again", "-w", ws.root, "-q"), str(table), "curata features -e color_stats")
    run_ = json.loads(ok(invoke("features", "-e", "color_stats", "-w", ws.root, "--json")).stdout)[0]
    assert run_["computed"] == 18 and "dropped 18 row(s) in damaged fragments" in run_["notes"][0], run_
    assert all(e is None for e in load_matrix(ws, make_extractor("color_stats"))[1])


def test_truncated_model_joblib_names_the_file_and_says_retrain(base, tmp_path) -> None:
    ws = copy_workspace(base, tmp_path / "ws")
    truncate(ws.root / "models" / "colour" / "model.joblib")
    one_line_error(invoke("predict", "colour", "--all", "-w", ws.root, "-q"), str(ws.root / "models" / "colour" /
                   "model.joblib"), "curata train colour --target label --features color_stats --name colour")


def test_truncated_joint_files_name_the_file_and_say_retrain(base, tmp_path) -> None:
    ws = copy_workspace(base, tmp_path / "ws")
    truncate(ws.root / "models" / "joint" / "heads.pt")
    one_line_error(invoke("search", "--text", "a red circle", "--model", "joint", "-w", ws.root),
                   str(ws.root / "models" / "joint" / "heads.pt"), "curata joint train --features color_stats,minilm")
    truncate(ws.root / "models" / "joint" / "card.json")
    one_line_error(invoke("search", "--text", "a red circle", "-w", ws.root),
                   str(ws.root / "models" / "joint" / "card.json"), "curata joint train")


# ---------------------------------------------------------------------------------------- 3. concurrent features


@pytest.mark.slow
def test_concurrent_features_runs_compute_once(base, tmp_path) -> None:
    ws = copy_workspace(base, tmp_path / "ws")
    # Each run sleeps before writing its part, so without a lock both would plan all 18 items.
    spec = {"slow": ["curata.features.store:FeatureStore.append", 1.0]}
    procs = [subprocess.Popen(patched(spec, "features", "-e", "color_hist", "-w", ws.root, "--json", "-q"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(json.loads(out)[0]["computed"] for out, _ in outs) == [0, 18]
    store = FeatureStore.for_extractor(ws.root / "features", make_extractor("color_hist"))
    assert store.read().num_rows == 18


def test_duplicate_rows_never_hide_a_computed_vector(tmp_path) -> None:
    store = FeatureStore(tmp_path, "x@1", 2)
    store.append(["a", "b"], np.array([[1, 0], [0, 1]], np.float32), [None, None])
    store.append(["a", "b"], np.zeros((2, 2), np.float32), ["boom", None])  # stored twice: a rerun, a race
    store.append(["b"], np.array([[0, 2]], np.float32), [None])
    vectors, errors = store.lookup(["a", "b", "c"])
    assert errors == [None, None, "not computed"]
    np.testing.assert_array_equal(vectors[:2], [[1, 0], [0, 2]])  # a's success, b's latest success


# ---------------------------------------------------------------------------------------- 4. folder entries


def test_hidden_files_and_dangling_links_are_reported_as_skipped(tmp_path) -> None:
    src = tmp_path / "pics"
    write_image(src / "a.png")
    (src / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (src / "._a.png").write_bytes(b"\0\5\26\7AppleDouble")
    (src / "Thumbs.db").write_bytes(b"x")
    (src / "gone.png").symlink_to(tmp_path / "missing.png")
    write_image(tmp_path / "elsewhere" / "b.png")
    (src / "linked").symlink_to(tmp_path / "elsewhere")
    write_image(src / ".git" / "c.png")  # a hidden folder is tool state: not walked, as before
    proc = ok(invoke("ingest", src, "-w", tmp_path / "ws", "--json"))
    report = json.loads(proc.stdout)
    skipped = {e["ref"]: e["code"] for e in report["entries"] if e["status"] == "skipped"}
    assert skipped == {".DS_Store": "hidden_file", "._a.png": "hidden_file", "Thumbs.db": "hidden_file",
                       "gone.png": "dangling_symlink", "linked": "symlinked_folder"}
    assert report["summary"]["skipped"] == 5 and report["summary"]["errors"] == 0
    assert list(Workspace(tmp_path / "ws").items()["id"]) == ["pics/a.png"]
    shown = ok(invoke("ingest", src, "-w", tmp_path / "ws")).stdout
    assert "skipped gone.png: symbolic link to a missing file" in shown and "skipped ._a.png" in shown


# ---------------------------------------------------------------------------------------- 5. foreign collection


@pytest.mark.parametrize("kind", ["other schema", "null ids", "not parquet"])
def test_a_foreign_collection_file_is_refused_in_one_line(base, tmp_path, kind) -> None:
    """A workspace from before Lance whose `collection.parquet` is not a curata collection: the conversion
    refuses it, naming the file, and nothing is written over it."""
    ws = copy_workspace(base, tmp_path / "ws")
    shutil.rmtree(ws.collection_path)
    path = ws.root / "collection.parquet"
    if kind == "other schema":
        pd.DataFrame({"name": ["a", "b"], "price": [1.0, 2.0]}).to_parquet(path)
    elif kind == "null ids":
        frame = base.items()
        frame["id"] = None
        pq.write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False), path)
    else:
        path.write_bytes(b"PAR1 this is not a parquet file")
    data = path.read_bytes()
    one_line_error(invoke("info", "-w", ws.root), str(path))
    source = make_source(tmp_path / "more", ["yellow"], "more")
    one_line_error(invoke("ingest", source, "-w", ws.root, "-q"), str(path))
    assert path.read_bytes() == data  # ingest did not save rows of nulls over it
    assert not ws.collection_path.exists()


def test_a_foreign_lance_table_is_refused_in_one_line(base, tmp_path) -> None:
    import lance

    ws = copy_workspace(base, tmp_path / "ws")
    shutil.rmtree(ws.collection_path)
    lance.write_dataset(pa.table({"name": ["a", "b"], "price": [1.0, 2.0]}), str(ws.collection_path))
    one_line_error(invoke("info", "-w", ws.root), str(ws.collection_path), "not a curata collection")
    source = make_source(tmp_path / "more", ["yellow"], "more")
    one_line_error(invoke("ingest", source, "-w", ws.root, "-q"), str(ws.collection_path))
    assert lance.dataset(str(ws.collection_path)).count_rows() == 2  # untouched


# ---------------------------------------------------------------------------------------- 6. full disk


@pytest.mark.parametrize(("code", "said"), [(errno.ENOSPC, "no space left on device"),
                                            (errno.EDQUOT, "disk quota exceeded"),
                                            (errno.EROFS, "read-only file system"),
                                            (None, "no space left on device")])
def test_a_full_disk_is_one_line_not_an_internal_error(tmp_path, monkeypatch, code, said) -> None:
    import lance

    def write_dataset(table, where, *args, **kwargs):
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / "half.lance").write_bytes(b"LANC")
        if code is None:  # the wording of an error without an errno
            raise OSError("IOError: Failed to write: [errno 28] No space left on device")
        raise OSError(code, os.strerror(code))

    src = tmp_path / "pics"
    write_image(src / "a.png")
    monkeypatch.setattr(lance, "write_dataset", write_dataset)
    proc = invoke("ingest", src, "-w", tmp_path / "ws", "-q")
    one_line_error(proc, f"error: {said} while writing {tmp_path / 'ws' / 'collection.lance'}", "rerun")
    assert sorted(p.name for p in (tmp_path / "ws").glob("*collection*")) == []  # nothing half-written left



@pytest.mark.parametrize("command", [["info"], ["ingest", "pics"], ["features", "-e", "color_stats"]])
def test_an_unreachable_workspace_uri_is_one_line_and_creates_no_folder(tmp_path, monkeypatch, command):
    """`-w s3://bucket/x` is a workspace on object storage (tests/test_workspace_objectstore.py); with no
    credentials or no endpoint it is one line, exit 2, naming the fix. It never becomes a local folder
    `s3:/bucket/x` (a Path folds the `//`)."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith(("AWS_", "GOOGLE_"))]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ALLOW_HTTP", "true")
    monkeypatch.setenv("GOOGLE_SERVICE_ACCOUNT_KEY", "{}")
    for uri in ("s3://bucket/prefix", "gs://b/p"):
        result = CliRunner().invoke(app, [*command, "-w", uri])
        assert result.exit_code == 2, result.output
        assert "object storage" in result.output and "credentials" in result.output, result.output
        assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
