"""Workspace storage at scale: does the cost of everyday work grow with the work, not with the collection?

    python benchmarks/scale_store.py [--sizes 10000,100000,1000000] [--quick] [--work /tmp/curata-bench-scale-store]
                                     [--steps add,reupsert,lookup,train,cluster,plan,ingest,serve] [--rebuild]
                                     [--train-budget 512M] [--accuracy-size 100000] [--cluster-budget 4G]
                                     [--out /tmp/curata-bench-scale-store/scale_store.json]

Input: synthetic workspaces of N items (default 10k, 100k and 1M; --quick: 2k and 20k), seeded and built once
under --work (reruns reuse them; the build times are printed). Rows are a pure function of their number
(20 collections, 50 labels, 3 tags, a short unique text, one real 8x8 PNG as the image, a unique synthetic
64-hex `image_sha256`) and go in through `Workspace.add_items` in batches of 100k; every item has a seeded
1280-d vector in the real `effnet_lite0` store and a 384-d one in the real `minilm` store (keyed by the text
hash), written through `FeatureStore.append` in chunks of 50k, then `finish()`. The effnet vectors carry the
label: centroid[label] + standard normal noise, the 50 centroids seeded normal x CENTROID_SCALE (0.15: a
standardised logistic regression scores ~0.92 on 5k items, ~0.99 on 100k; the classes are separable but not
trivially), so training accuracy and clustering ARI mean something. A build records BUILD_FORMAT; a cached
build of another format is rebuilt.

Each run first copies the collection of a built workspace to a scratch workspace (its `features/` linked, not
copied), so the steps that add items never change the cached build. Every step runs in its own child process
(peak RSS per step; imports and the first open of the tables are not timed):

  add        upsert 1,000 new items (median of 3) / the same into an empty workspace      target <= 2x
  reupsert   re-upsert min(100k, N) unchanged items: the compare-and-upsert step, items/s target >= 20,000/s
  lookup     `FeatureStore.lookup` of the 1280-d vectors of 1,000 random items (median of 5), and the extra
             RSS it takes (peak during the lookups minus RSS before)                     target <= 100 ms, <= 200 MB
  plan       `compute(effnet_lite0)` with nothing to do (a full check, as the first `features` run after the
             build: it leaves the store's plan mark), then add 1,000 items without vectors and time
             `plan_compute(effnet_lite0)` (planning only; first call of the process, then the median of 3
             more, as lookup's)                                                          target <= 2 s
  ingest     a real `ingest` of 500 generated 8x8 PNGs into the workspace / into an empty one      target <= 2x
  serve      `curata serve`: seconds until /v1/ready answers 200, server RSS, and p50/p99 of 100 requests
             `/v1/items?label=<label>&limit=50`               target ready <= 10 s, RSS <= 3 GB, p99 <= 100 ms
  train      `curata train collection --features effnet_lite0 --target label --model logreg --folds 2` with
             CURATA_MEMORY_BUDGET=--train-budget (512M: the sample fills half of it, 52k rows of 1280-d, so 100k
             and 1M train on a stratified sample); at --accuracy-size also with a budget that holds every row:
             the sample's cross-validated accuracy against the in-memory fit's
                                                                 target peak RSS <= 6 GB, |difference| <= 1 point
  cluster    `curata cluster -f effnet_lite0 -m kmeans -k 50` (budget --cluster-budget, default curata's 4 GiB;
             past 50k items or over budget k-means streams: sample start + Lloyd passes): time, peak RSS,
             mode, ARI against the labels                                             target peak RSS <= 6 GB
             (train and cluster run the real CLI; peak RSS is its VmHWM, via getrusage of a wrapper child)

Per-item costs (time / items touched) are printed per size, with the ratio of each size's cost to the
smallest size's: the target is that this stays within 2x across sizes (the per-N costs of the whole-table
steps are printed for information). The machine is shared (2 cores): compare within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SEED = 0
N_COLLECTIONS, N_LABELS = 20, 50
ROW_BATCH, VEC_CHUNK = 100_000, 50_000
INGEST_IMAGES = 500
STEPS = ("add", "reupsert", "lookup", "train", "cluster", "plan", "ingest", "serve")
TARGETS = {"add_ratio": 2.0, "reupsert_per_s": 20_000, "lookup_ms": 100.0, "lookup_extra_mb": 200.0,
           "plan_s": 2.0, "ingest_ratio": 2.0, "ready_s": 10.0, "serve_rss_mb": 3072.0, "p99_ms": 100.0,
           "across_sizes": 2.0, "train_rss_mb": 6000.0, "cluster_rss_mb": 6000.0, "accuracy_diff_points": 1.0}
BUILD_FORMAT = 2  # 2: effnet vectors = centroid[label] + noise (1: pure noise); the cache key of a build
CENTROID_SCALE = 0.15
ALL_ROWS_BUDGET = "64G"  # a budget every benchmark size fits in: the in-memory fit
ADJ = ("red", "green", "blue", "tiny", "large", "shiny", "old", "new", "striped", "plain")
NOUN = ("hat", "shoe", "lamp", "chair", "mug", "ring", "bag", "coat", "vase", "clock")


# Memory ------------------------------------------------------------------------------------------------
def _status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS / VmHWM (MB) of a process, from /proc."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0), so a later VmHWM is this step's peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# Synthetic data ----------------------------------------------------------------------------------------
def item_hash(i: int, prefix: str = "synth") -> str:
    return hashlib.sha256(f"{prefix}/{SEED}/{i}".encode()).hexdigest()


def label_index(i: np.ndarray) -> np.ndarray:
    """The label number (0..N_LABELS-1) of rows `i`."""
    return ((np.asarray(i, dtype=np.int64) * 2654435761) % (2**32)) % N_LABELS


def effnet_vectors(start: int, stop: int, dim: int) -> np.ndarray:
    """Rows start..stop-1 of the synthetic effnet vectors: centroid[label] + N(0, 1) noise (float32)."""
    centroids = np.random.default_rng([SEED, 3]).standard_normal((N_LABELS, dim), dtype=np.float32) * CENTROID_SCALE
    rng = np.random.default_rng([SEED, 2, start])
    vecs = rng.standard_normal((stop - start, dim), dtype=np.float32)
    vecs += centroids[label_index(np.arange(start, stop))]
    return vecs


def synth_rows(start: int, stop: int, image: str, prefix: str = "synth"):
    """Rows start..stop-1 as a collection frame; every field a pure function of the row number."""
    import pandas as pd

    from curata.collection import COLUMNS

    i = np.arange(start, stop, dtype=np.int64)
    mix = (i * 2654435761) % (2**32)
    labels = np.array([f"label_{k:02d}" for k in range(N_LABELS)], dtype=object)[label_index(i)]
    colls = np.array([f"coll_{k:02d}" for k in range(N_COLLECTIONS)], dtype=object)[i % N_COLLECTIONS]
    adj = np.array(ADJ, dtype=object)[(mix >> 8) % len(ADJ)]
    noun = np.array(NOUN, dtype=object)[(mix >> 16) % len(NOUN)]
    texts = [f"{prefix} item {k}: a {a} {n}" for k, a, n in zip(i.tolist(), adj, noun, strict=True)]
    frame = pd.DataFrame({
        "id": [f"{prefix}/{k:07d}" for k in i.tolist()], "source": prefix, "collection": colls, "image": image,
        "image_sha256": [item_hash(k, prefix) for k in i.tolist()], "width": 8, "height": 8, "image_mode": "RGB",
        "image_format": "PNG", "text": texts, "captions": [[t] for t in texts], "label": labels,
        "tags": [[f"adj={a}", f"noun={n}", f"coll={c}"] for a, n, c in zip(adj, noun, colls, strict=True)],
        "attributes": "[]", "split": None, "meta": "{}",
    })
    return frame[COLUMNS]


def write_png(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng([SEED, seed])
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB").save(path)


def stores(ws_root: Path):
    from curata.features.engine import make_extractor
    from curata.features.store import FeatureStore

    return {name: (make_extractor(name), FeatureStore.for_extractor(ws_root / "features", make_extractor(name)))
            for name in ("effnet_lite0", "minilm")}


# Children ----------------------------------------------------------------------------------------------
def child_build(a: dict) -> dict:
    """Build the N-item workspace at a['ws'] (collection, then both feature stores)."""
    from curata.features.engine import text_hash
    from curata.workspace import Workspace

    ws = Workspace(Path(a["ws"])).create()
    n, image = a["n"], a["image"]
    t0 = time.perf_counter()
    for start in range(0, n, ROW_BATCH):
        added, _, _ = ws.add_items(synth_rows(start, min(n, start + ROW_BATCH), image), "bench build")
        assert added == min(n, start + ROW_BATCH) - start
    t1 = time.perf_counter()
    seconds = {"items_s": t1 - t0}
    for name, (ext, store) in stores(ws.root).items():
        t = time.perf_counter()
        for start in range(0, n, VEC_CHUNK):
            stop = min(n, start + VEC_CHUNK)
            if name == "minilm":
                keys = [text_hash(t) for t in synth_rows(start, stop, image)["text"]]
                vecs = np.random.default_rng([SEED, 1, start]).standard_normal((stop - start, ext.dim),
                                                                                dtype=np.float32)
            else:
                keys = [item_hash(k) for k in range(start, stop)]
                vecs = effnet_vectors(start, stop, ext.dim)
            store.append(keys, vecs, [None] * len(keys))
            del vecs
        store.finish()
        seconds[f"{name}_s"] = time.perf_counter() - t
    seconds["total_s"] = time.perf_counter() - t0
    return {"n": n, "format": BUILD_FORMAT, "seconds": seconds, "items": ws.collection.count(),
            "peak_rss_mb": _status().get("VmHWM")}


def _warm(ws) -> None:
    """Import and open the tables once, untimed."""
    ws.collection.count()
    ws.items(["id"], "id = 'nothing'")


def child_add(a: dict) -> dict:
    from curata.workspace import Workspace

    ws, image, times = Workspace(Path(a["ws"])), a["image"], []
    _warm(ws) if ws.exists else None
    for rep in range(3):
        frame = synth_rows(0, 1000, image, prefix=f"{a['prefix']}{rep}")
        _reset_peak()
        t = time.perf_counter()
        added, updated, unchanged = ws.add_items(frame, "bench add")
        times.append(time.perf_counter() - t)
        assert (added, updated, unchanged) == (1000, 0, 0), (added, updated, unchanged)
    return {"times_s": times, "median_s": statistics.median(times), "peak_rss_mb": _status().get("VmHWM")}


def child_add_empty(a: dict) -> dict:
    """1,000 items into 3 fresh empty workspaces (the create path)."""
    from curata.collection import Collection
    from curata.workspace import Workspace

    base, times = Path(a["ws"]), []
    Collection(base).count()  # import lance untimed
    for rep in range(3):
        ws = Workspace(base / f"empty{rep}")
        shutil.rmtree(ws.root, ignore_errors=True)
        frame = synth_rows(0, 1000, a["image"], prefix=f"empty{rep}")
        t = time.perf_counter()
        added, _, _ = ws.add_items(frame, "bench add")
        times.append(time.perf_counter() - t)
        assert added == 1000
    return {"times_s": times, "median_s": statistics.median(times)}


def child_reupsert(a: dict) -> dict:
    from curata.workspace import Workspace

    ws = Workspace(Path(a["ws"]))
    _warm(ws)
    k = min(100_000, a["n"])
    frame = synth_rows(0, k, a["image"])
    _reset_peak()
    before = _status().get("VmRSS", 0)
    t = time.perf_counter()
    added, updated, unchanged = ws.add_items(frame, "bench reupsert")
    dt = time.perf_counter() - t
    return {"items": k, "seconds": dt, "per_s": k / dt, "counts": [added, updated, unchanged],
            "extra_rss_mb": _status().get("VmHWM", 0) - before}


def child_lookup(a: dict) -> dict:
    ext, store = stores(Path(a["ws"]))["effnet_lite0"]
    n, rng = a["n"], np.random.default_rng([SEED, 7])
    store.lookup([item_hash(0)])  # open + index, untimed
    times, extra, first = [], [], None
    for rep in range(6):
        hashes = [item_hash(int(k)) for k in rng.choice(n, 1000, replace=False)]
        _reset_peak()
        before = _status().get("VmRSS", 0)
        t = time.perf_counter()
        vecs, errors = store.lookup(hashes)
        dt = time.perf_counter() - t
        extra.append(_status().get("VmHWM", 0) - before)
        assert vecs.shape == (1000, ext.dim) and all(e is None for e in errors), "lookup lost vectors"
        if rep == 0:
            first = dt
        else:
            times.append(dt)
        del vecs
    return {"first_ms": 1000 * first, "median_ms": 1000 * statistics.median(times),
            "max_ms": 1000 * max(times), "extra_rss_mb": max(extra), "peak_rss_mb": _status().get("VmHWM")}


def child_plan(a: dict) -> dict:
    from curata.features.engine import compute, make_extractor, plan_compute
    from curata.workspace import Workspace

    ws = Workspace(Path(a["ws"]))
    _warm(ws)
    ext = make_extractor("effnet_lite0")
    # The state after a `curata features` run: the store covers every item and knows it (its plan mark).
    # That first run checks every item's hash (timed for information: the cost without a mark). `features/`
    # is the cached build's, shared by every run: a mark an earlier run left there is dropped first.
    from curata.features.store import FeatureStore

    FeatureStore.for_extractor(ws.root / "features", ext).forget_plan_mark()
    t = time.perf_counter()
    full = compute(ext, ws)
    full_s = time.perf_counter() - t
    ws.add_items(synth_rows(0, 1000, a["image"], prefix=a["prefix"]), "bench plan")
    _reset_peak()
    before = _status().get("VmRSS", 0)
    t = time.perf_counter()
    plan = plan_compute(ext, ws)
    first = time.perf_counter() - t
    warm = []  # the same plan again in this process: the store's index pages are cached (like lookup's median)
    for _ in range(3):
        t = time.perf_counter()
        plan_compute(ext, ws)
        warm.append(time.perf_counter() - t)
    return {"seconds": float(np.median(warm)), "first_s": first, "todo": len(plan.todo), "items": plan.run.items,
            "cached": plan.run.cached, "extra_rss_mb": _status().get("VmHWM", 0) - before,
            "full_check_s": full_s, "full_check_computed": full.computed}


def child_ingest(a: dict) -> dict:
    from curata.ingest.pipeline import IngestOptions, ingest
    from curata.workspace import Workspace

    ws = Workspace(Path(a["ws"]))
    if ws.exists:
        _warm(ws)
    from PIL import Image  # noqa: F401  (imported untimed, both sides)

    t = time.perf_counter()
    report = ingest(a["images"], ws, IngestOptions(source_name=a["prefix"]))
    dt = time.perf_counter() - t
    assert report.added == INGEST_IMAGES, (report.added, report.updated, report.unchanged)
    return {"seconds": dt, "added": report.added}


def child_cli(a: dict) -> dict:
    """Run a `curata ... --json` command (env a['env'] on top of this one's), timed; its peak RSS is the
    VmHWM of this process's only child (getrusage), so a command that fails or times out still has one."""
    import resource

    env = {**{k: v for k, v in os.environ.items() if k != "CURATA_MEMORY_BUDGET"}, **a.get("env", {})}
    t = time.perf_counter()
    result: dict = {"budget": a.get("env", {}).get("CURATA_MEMORY_BUDGET", "default")}
    try:
        out = subprocess.run(a["cmd"], env=env, capture_output=True, text=True, timeout=a["limit"])
        if out.returncode != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-4:]
            result["error"] = f"exit {out.returncode}: {' | '.join(tail)}"[-1500:]
        else:
            result["json"] = json.loads(out.stdout)
    except subprocess.TimeoutExpired:
        result["error"] = f"timed out after {a['limit']:.0f} s"
    result["seconds"] = time.perf_counter() - t
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return result


CHILDREN = {"build": child_build, "add": child_add, "add_empty": child_add_empty, "reupsert": child_reupsert,
            "lookup": child_lookup, "plan": child_plan, "ingest": child_ingest, "cli": child_cli}


def run_child(kind: str, timeout: float = 3600, **args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CURATA_API_KEY", "CURATA_WORKSPACE")}
    env["PYTHONPATH"] = str(ROOT / "src")
    t = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(args)], env=env,
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {out.returncode}: {' | '.join(tail)}"}
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - t
    return result


# Serve ---------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _tree_rss(pid: int) -> float:
    """VmRSS (MB) of a process and its descendants."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += _status(p).get("VmRSS", 0)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return total


def measure_serve(ws: Path, timeout: float, log: Path) -> dict:
    exe = Path(sys.executable).with_name("curata")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("CURATA_API_KEY", "CURATA_WORKSPACE")}
    base = f"http://127.0.0.1:{port}"
    result: dict = {}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(exe), "serve", "-w", str(ws), "--port", str(port), "--log-level", "warning"],
                                stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        health = None
        while time.perf_counter() - t0 < timeout:
            if proc.poll() is not None:
                last = (log.read_text().strip().splitlines() or [""])[-1]
                result["error"] = f"server exited {proc.returncode}: {last[:300]}"
                return result
            try:
                if health is None and _get(f"{base}/v1/health", 2)[0] == 200:
                    health = time.perf_counter() - t0
                if health is not None:
                    code, body = _get(f"{base}/v1/ready", 30)
                    if code == 200:
                        result["ready_s"] = time.perf_counter() - t0
                        result["ready_items"] = json.loads(body).get("items")
                        break
                    result["last_status"] = json.loads(body).get("status")
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        result["health_s"] = health
        if "ready_s" not in result:
            result["error"] = f"not ready after {timeout:.0f} s ({result.get('last_status')})"
            result["rss_mb"] = _tree_rss(proc.pid)
            return result
        result["rss_after_ready_mb"] = _tree_rss(proc.pid)
        times, totals = [], []
        for k in range(101):
            t = time.perf_counter()
            code, body = _get(f"{base}/v1/items?label=label_{k % N_LABELS:02d}&limit=50")
            dt = time.perf_counter() - t
            if code != 200:
                result["error"] = f"/v1/items answered {code}: {body[:200]!r}"
                return result
            if k:  # the first request is not timed
                times.append(dt)
                totals.append(json.loads(body)["total"])
            else:
                result["first_request_ms"] = 1000 * dt
        times.sort()
        p99 = times[min(len(times) - 1, -(-99 * len(times) // 100) - 1)]  # nearest rank
        result.update(p50_ms=1000 * times[len(times) // 2], p99_ms=1000 * p99,
                      max_ms=1000 * times[-1], label_total=statistics.median(totals), rss_mb=_tree_rss(proc.pid),
                      hwm_mb=_status(proc.pid).get("VmHWM"))
        return result
    finally:
        stop_server(proc)


def stop_server(proc: subprocess.Popen) -> None:
    """End a server started in its own session (its workers too): TERM, then KILL after 10 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


# Driver --------------------------------------------------------------------------------------------------
def ensure_built(work: Path, n: int, image: Path, rebuild: bool) -> dict:
    ws = work / f"ws-{n}"
    marker = ws / "bench-build.json"
    if rebuild and ws.exists():
        shutil.rmtree(ws)
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("format", 1) == BUILD_FORMAT:
            info["cached"] = True
            return info
        print(f"{ws}: cached build format {info.get('format', 1)}, not {BUILD_FORMAT}: rebuilding", flush=True)
    shutil.rmtree(ws, ignore_errors=True)
    print(f"building {n:,} items in {ws} ...", flush=True)
    info = run_child("build", timeout=4 * 3600, ws=str(ws), n=n, image=str(image))
    if "error" in info:
        raise SystemExit(f"building {ws} failed: {info['error']}")
    info["disk_mb"] = sum(f.stat().st_size for f in ws.rglob("*") if f.is_file()) / 2**20
    marker.write_text(json.dumps(info))
    info["cached"] = False
    print(f"  built in {info['seconds']['total_s']:.0f} s ({info['disk_mb']:.0f} MB on disk)", flush=True)
    return info


def scratch_copy(work: Path, n: int) -> Path:
    """A scratch workspace: the built collection copied, its features linked (read-only steps use them)."""
    src, dst = work / f"ws-{n}", work / f"scratch-{n}"
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copytree(src / "collection.lance", dst / "collection.lance")
    shutil.copy2(src / "history.jsonl", dst / "history.jsonl")
    (dst / "features").symlink_to(src / "features")
    return dst


def _curata() -> str:
    return str(Path(sys.executable).with_name("curata"))


def measure_train(ws: Path, budget: str, timeout: float, name: str) -> dict:
    """`curata train collection` (logreg, 2 folds) under a memory budget: accuracy, rows used, time, peak RSS."""
    cmd = [_curata(), "train", "collection", "--features", "effnet_lite0", "--target", "label", "--model", "logreg",
           "--folds", "2", "--name", name, "-w", str(ws), "--json", "-q"]
    r = run_child("cli", timeout=timeout + 120, cmd=cmd, env={"CURATA_MEMORY_BUDGET": budget}, limit=timeout)
    out = {k: v for k, v in r.items() if k != "json"}
    if "json" in r:
        protocol, row = r["json"]["protocol"], r["json"]["table"][0]
        out.update(protocol["training_data"], accuracy=row.get("accuracy"), accuracy_std=row.get("accuracy_std"),
                   macro_f1=row.get("macro_f1"), cv_fit_seconds=row.get("fit_seconds"),
                   fit_all_seconds=protocol.get("fit_all_seconds"), skipped=protocol.get("skipped"))
    return out


def measure_cluster(ws: Path, budget: str | None, timeout: float) -> dict:
    """`curata cluster` k-means k=50 on effnet_lite0: mode (in memory / streamed), ARI, time, peak RSS."""
    cmd = [_curata(), "cluster", "-f", "effnet_lite0", "-m", "kmeans", "-k", "50", "--name", "bench-kmeans",
           "-w", str(ws), "--json", "-q"]
    r = run_child("cli", timeout=timeout + 120, cmd=cmd, env={"CURATA_MEMORY_BUDGET": budget} if budget else {},
                  limit=timeout)
    out = {k: v for k, v in r.items() if k != "json"}
    if "json" in r:
        summary = r["json"]
        out.update(mode=_g(summary, "memory", "mode"), memory=summary.get("memory"), k=summary.get("k"),
                   items=summary.get("items"), run_seconds=summary.get("seconds"), map=summary.get("map"),
                   ari=_g(summary, "scores", "ari"), nmi=_g(summary, "scores", "nmi"),
                   silhouette=_g(summary, "scores", "silhouette"))
    return out


def measure(work: Path, n: int, image: Path, images: Path, steps: list[str], serve_timeout: float,
            opts: argparse.Namespace | None = None) -> dict:
    ws = scratch_copy(work, n)
    out: dict = {"n": n}
    if "reupsert" in steps:
        out["reupsert"] = run_child("reupsert", ws=str(ws), n=n, image=str(image))
    if "lookup" in steps:
        out["lookup"] = run_child("lookup", ws=str(ws), n=n)
    # train and cluster before the steps that add items (the added items have no vectors)
    if "train" in steps:
        print(f"  train (budget {opts.train_budget}) ...", flush=True)
        out["train"] = measure_train(ws, opts.train_budget, opts.train_timeout, "bench")
        if n == opts.accuracy_size:
            print(f"  train (budget {ALL_ROWS_BUDGET}: every row) ...", flush=True)
            out["train_all"] = measure_train(ws, ALL_ROWS_BUDGET, opts.train_timeout, "bench-all")
            a, b = _g(out, "train", "accuracy"), _g(out, "train_all", "accuracy")
            if a is not None and b is not None:
                out["accuracy_diff_points"] = 100 * (a - b)
    if "cluster" in steps:
        print(f"  cluster (budget {opts.cluster_budget or 'default'}) ...", flush=True)
        out["cluster"] = measure_cluster(ws, opts.cluster_budget, opts.cluster_timeout)
    if "plan" in steps:  # first of the steps that add items: its todo is its own 1,000
        out["plan"] = run_child("plan", ws=str(ws), image=str(image), prefix="plan")
    if "add" in steps:
        big = run_child("add", ws=str(ws), image=str(image), prefix="add")
        empty = run_child("add_empty", ws=str(work / "empty"), image=str(image))
        out["add"] = {"big": big, "empty": empty}
        if "error" not in big and "error" not in empty:
            out["add"]["ratio"] = big["median_s"] / empty["median_s"]
    if "ingest" in steps:
        empty_ws = work / "empty-ingest"
        shutil.rmtree(empty_ws, ignore_errors=True)
        big = run_child("ingest", ws=str(ws), images=str(images), prefix="ingest")
        empty = run_child("ingest", ws=str(empty_ws), images=str(images), prefix="ingest")
        out["ingest"] = {"big": big, "empty": empty}
        if "error" not in big and "error" not in empty:
            out["ingest"]["ratio"] = big["seconds"] / empty["seconds"]
    if "serve" in steps:
        out["serve"] = measure_serve(ws, serve_timeout, work / f"serve-{n}.log")
    return out


def _g(d: dict, *path, default=None):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def report(results: list[dict], builds: dict) -> tuple[list[str], list[str]]:
    lines, notes = [], []
    sizes = [r["n"] for r in results]
    lines.append("build (cached builds show their original times)")
    lines.append(f"{'items':>9s} {'rows s':>8s} {'effnet s':>9s} {'minilm s':>9s} {'total s':>8s} {'disk MB':>8s} "
                 f"{'peak MB':>8s} {'cached':>6s}")
    for n in sizes:
        b = builds[n]
        s = b["seconds"]
        lines.append(f"{n:9,d} {s['items_s']:8.1f} {s['effnet_lite0_s']:9.1f} {s['minilm_s']:9.1f} {s['total_s']:8.1f} "
                     f"{_fmt(b.get('disk_mb'), '8.0f')} {_fmt(b.get('peak_rss_mb'), '8.0f')} {b['cached']!s:>6s}")
    # metric name, getter, unit, per-item divisor (items touched), target check
    metrics = [
        ("add 1k into N (s)", lambda r: _g(r, "add", "big", "median_s"), 1000),
        ("add 1k into empty (s)", lambda r: _g(r, "add", "empty", "median_s"), 1000),
        ("add ratio N/empty", lambda r: _g(r, "add", "ratio"), None),
        ("reupsert items/s", lambda r: _g(r, "reupsert", "per_s"), None),
        ("reupsert extra RSS MB", lambda r: _g(r, "reupsert", "extra_rss_mb"), None),
        ("lookup 1k ms (median)", lambda r: _g(r, "lookup", "median_ms"), 1000),
        ("lookup 1k ms (first)", lambda r: _g(r, "lookup", "first_ms"), None),
        ("lookup extra RSS MB", lambda r: _g(r, "lookup", "extra_rss_mb"), None),
        ("plan 1k new (s, median)", lambda r: _g(r, "plan", "seconds"), None),
        ("plan 1k new (s, first)", lambda r: _g(r, "plan", "first_s"), None),
        ("plan todo", lambda r: _g(r, "plan", "todo"), None),
        ("plan extra RSS MB", lambda r: _g(r, "plan", "extra_rss_mb"), None),
        ("full check, no mark (s)", lambda r: _g(r, "plan", "full_check_s"), None),
        ("ingest 500 into N (s)", lambda r: _g(r, "ingest", "big", "seconds"), INGEST_IMAGES),
        ("ingest 500 into empty (s)", lambda r: _g(r, "ingest", "empty", "seconds"), INGEST_IMAGES),
        ("ingest ratio N/empty", lambda r: _g(r, "ingest", "ratio"), None),
        ("serve ready (s)", lambda r: _g(r, "serve", "ready_s"), None),
        ("serve health (s)", lambda r: _g(r, "serve", "health_s"), None),
        ("serve RSS MB", lambda r: _g(r, "serve", "rss_mb"), None),
        ("items?label p50 ms", lambda r: _g(r, "serve", "p50_ms"), None),
        ("items?label p99 ms", lambda r: _g(r, "serve", "p99_ms"), None),
    ]
    lines.append("")
    lines.append(f"{'measurement':28s} " + " ".join(f"{n:>12,d}" for n in sizes) + "   ratio to smallest")
    for name, get, _ in metrics:
        vals = [get(r) for r in results]
        row = f"{name:28s} " + " ".join(f"{_fmt(v, '12.4g')}" for v in vals)
        if vals[0]:
            row += "   " + " ".join(_fmt(v / vals[0] if v is not None else None, "5.2f") for v in vals)
        lines.append(row)
    lines.append("")
    lines.append("per-item cost (µs per item touched; the whole-table steps also per collection item)")
    per = [("add (1k items)", lambda r: _g(r, "add", "big", "median_s"), lambda r: 1000),
           ("reupsert", lambda r: _g(r, "reupsert", "seconds"), lambda r: _g(r, "reupsert", "items")),
           ("lookup (1k)", lambda r: (_g(r, "lookup", "median_ms") or 0) / 1000 or None, lambda r: 1000),
           ("plan per new item (1k)", lambda r: _g(r, "plan", "seconds"), lambda r: 1000),
           ("plan per collection item", lambda r: _g(r, "plan", "seconds"), lambda r: r["n"]),
           ("ingest (500 images)", lambda r: _g(r, "ingest", "big", "seconds"), lambda r: INGEST_IMAGES),
           ("serve ready per coll. item", lambda r: _g(r, "serve", "ready_s"), lambda r: r["n"]),
           ("serve RSS KB per coll. item", lambda r: (_g(r, "serve", "rss_mb") or 0) * 1024 / 1e6 or None,
            lambda r: r["n"])]
    lines.append(f"{'step':28s} " + " ".join(f"{n:>12,d}" for n in sizes) + "   ratio to smallest")
    for name, get, div in per:
        vals = [(get(r) * 1e6 / div(r)) if get(r) is not None and div(r) else None for r in results]
        row = f"{name:28s} " + " ".join(_fmt(v, "12.4g") for v in vals)
        if vals[0]:
            ratios = [v / vals[0] if v is not None else None for v in vals]
            row += "   " + " ".join(_fmt(x, "5.2f") for x in ratios)
            if name in ("add (1k items)", "reupsert", "lookup (1k)", "plan per new item (1k)", "ingest (500 images)"):
                worst = max(x for x in ratios if x is not None)
                notes.append(f"{name}: cost across sizes within {worst:.2f}x (<= {TARGETS['across_sizes']}): "
                             f"{'met' if worst <= TARGETS['across_sizes'] else 'NOT met'}")
        lines.append(row)
    def check(r, label, value, target, le=True, unit=""):
        n = r["n"]
        if value is None and label.split()[0] not in r:  # a step not selected with --steps
            return
        if value is None:
            err = next((_g(r, *p, "error") for p in (("add", "big"), ("add", "empty"), ("reupsert",), ("lookup",),
                                                      ("plan",), ("ingest", "big"), ("serve",))
                        if label.split()[0] in p[0] and _g(r, *p, "error")), None)
            notes.append(f"{n:,}: {label}: not measured{' (' + err + ')' if err else ''}")
            return
        ok = value <= target if le else value >= target
        notes.append(f"{n:,}: {label} {value:,.3g}{unit} ({'<=' if le else '>='} {target:,}{unit}): "
                     f"{'met' if ok else 'NOT met'}")

    for r in results:
        check(r, "add ratio", _g(r, "add", "ratio"), TARGETS["add_ratio"], unit="x")
        check(r, "reupsert items/s", _g(r, "reupsert", "per_s"), TARGETS["reupsert_per_s"], le=False)
        check(r, "lookup ms", _g(r, "lookup", "median_ms"), TARGETS["lookup_ms"], unit=" ms")
        check(r, "lookup extra RSS", _g(r, "lookup", "extra_rss_mb"), TARGETS["lookup_extra_mb"], unit=" MB")
        check(r, "plan s", _g(r, "plan", "seconds"), TARGETS["plan_s"], unit=" s")
        check(r, "ingest ratio", _g(r, "ingest", "ratio"), TARGETS["ingest_ratio"], unit="x")
        check(r, "serve ready", _g(r, "serve", "ready_s"), TARGETS["ready_s"], unit=" s")
        check(r, "serve RSS", _g(r, "serve", "rss_mb"), TARGETS["serve_rss_mb"], unit=" MB")
        check(r, "serve p99", _g(r, "serve", "p99_ms"), TARGETS["p99_ms"], unit=" ms")
    train_lines, train_notes = report_learning(results)
    return lines + train_lines, notes + train_notes


def report_learning(results: list[dict]) -> tuple[list[str], list[str]]:
    """The train / cluster table: one row per size and run."""
    lines, notes = [], []
    rows = [(r["n"], key, r[key]) for r in results for key in ("train", "train_all", "cluster") if key in r]
    if not rows:
        return lines, notes
    lines += ["", f"train (collection, logreg, 2-fold) and cluster (k-means k=50) on effnet_lite0 "
              f"(target peak RSS <= {TARGETS['train_rss_mb']:.0f} MB; sample vs all rows accuracy within "
              f"{TARGETS['accuracy_diff_points']:g} point)",
              f"{'items':>9s} {'step':9s} {'budget':>7s} {'mode':>9s} {'rows used':>10s} {'seconds':>8s} "
              f"{'peak MB':>8s} {'accuracy':>8s} {'ARI':>6s}  error"]
    for n, key, m in rows:
        mode = m.get("mode")
        used = m.get("rows_used") if key != "cluster" else _g(m, "memory", "sample_rows")
        lines.append(f"{n:9,d} {key:9s} {m.get('budget', '-'):>7s} {mode or '-':>9s} {_fmt(used, '10,d')} "
                     f"{_fmt(m.get('seconds'), '8.0f')} {_fmt(m.get('peak_rss_mb'), '8.0f')} "
                     f"{_fmt(m.get('accuracy'), '8.4f')} {_fmt(m.get('ari'), '6.3f')}  {m.get('error', '')}")
    if any(key == "cluster" for _, key, _ in rows):
        lines.append("(cluster rows used: the sample a streamed run holds whole; seconds include the CLI's start, "
                     "the cluster naming and the 2-D map)")
    for r in results:
        n = r["n"]
        for key, target in (("train", "train_rss_mb"), ("train_all", "train_rss_mb"), ("cluster", "cluster_rss_mb")):
            if key not in r:
                continue
            m, what = r[key], f"{n:,}: {key} ({r[key].get('mode')}, budget {r[key].get('budget')})"
            if "error" in m:
                notes.append(f"{what}: failed after {m['seconds']:.0f} s ({m['error']}); peak RSS "
                             f"{m['peak_rss_mb']:.0f} MB")
                continue
            ok = m["peak_rss_mb"] <= TARGETS[target]
            notes.append(f"{what}: peak RSS {m['peak_rss_mb']:.1f} MB (<= {TARGETS[target]:.0f} MB): "
                         f"{'met' if ok else 'NOT met'}")
        if "train_all" in r:
            d = r.get("accuracy_diff_points")
            if d is None:
                notes.append(f"{n:,}: sample vs all rows accuracy: not measured")
            else:
                t, a = r["train"], r["train_all"]
                ok = abs(d) <= TARGETS["accuracy_diff_points"]
                notes.append(f"{n:,}: accuracy of the sample fit ({t.get('rows_used'):,} of {t.get('rows_total'):,} "
                             f"rows, {t.get('mode')}) {t['accuracy']:.4f} vs every row ({a.get('mode')}) "
                             f"{a['accuracy']:.4f}: {d:+.2f} points (|diff| <= {TARGETS['accuracy_diff_points']:g}): "
                             f"{'met' if ok else 'NOT met'}")
    return lines, notes


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        print(json.dumps(CHILDREN[sys.argv[2]](json.loads(sys.argv[3]))))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000", help="collection sizes (comma-separated)")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 2000,20000")
    p.add_argument("--work", default="/tmp/curata-bench-scale-store", help="built workspaces are cached here")
    p.add_argument("--steps", default=",".join(STEPS), help=f"which steps ({','.join(STEPS)})")
    p.add_argument("--serve-timeout", type=float, default=180.0, help="seconds to wait for /v1/ready")
    p.add_argument("--rebuild", action="store_true", help="delete and rebuild the synthetic workspaces")
    p.add_argument("--train-budget", default="512M",
                   help="CURATA_MEMORY_BUDGET of the train step (512M: a 52k-row sample of 1280-d at 100k and 1M)")
    p.add_argument("--accuracy-size", type=int, default=100_000,
                   help="the size at which train also runs with every row in memory, to compare accuracies")
    p.add_argument("--cluster-budget", default=None,
                   help="CURATA_MEMORY_BUDGET of the cluster step (default: curata's, 4 GiB)")
    p.add_argument("--train-timeout", type=float, default=1800.0, help="seconds before a train run is a failure")
    p.add_argument("--cluster-timeout", type=float, default=1800.0, help="seconds before a cluster run is a failure")
    p.add_argument("--out", default=None, help="JSON results (default: <work>/scale_store[-quick].json)")
    args = p.parse_args()
    sizes = [2000, 20000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or work / f"scale_store{'-quick' if args.quick else ''}.json")
    started = time.perf_counter()
    image = work / "tiny.png"
    if not image.exists():
        write_png(image, 10**6)
    images = work / "ingest-pngs"
    if not (images / f"img{INGEST_IMAGES - 1:04d}.png").exists():
        images.mkdir(exist_ok=True)
        for k in range(INGEST_IMAGES):
            write_png(images / f"img{k:04d}.png", k)
    builds, results = {}, []
    for n in sizes:
        builds[n] = ensure_built(work, n, image, args.rebuild)
        print(f"measuring {n:,} items ...", flush=True)
        t = time.perf_counter()
        results.append(measure(work, n, image, images, steps, args.serve_timeout, args))
        print(f"  measured in {time.perf_counter() - t:.0f} s", flush=True)
        shutil.rmtree(work / f"scratch-{n}", ignore_errors=True)
    lines, notes = report(results, builds)
    print()
    print("\n".join(lines))
    print()
    for note in notes:
        print("note:", note)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "cores": len(os.sched_getaffinity(0)), "targets": TARGETS,
                               "builds": {str(k): v for k, v in builds.items()}, "results": results,
                               "table": lines, "notes": notes,
                               "seconds": round(time.perf_counter() - started, 1)}, indent=2, default=str))
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
