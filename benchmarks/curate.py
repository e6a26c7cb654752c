"""Curation: does the review queue fix label noise, and how fast are a curator's writes on a big collection?

    python benchmarks/curate.py [--data ../shared/data] [--work /tmp/curata-bench-curate] [--quick]
                                [--workspaces benchmarks/workspaces] [--parts 1,2] [--rebuild]
                                [--out benchmarks/results/curate.json]

Part 1, label noise fixed by the review queue (flipkart, 1,047 products, 7 categories). The workspace comes
from `accuracy.prepare("flipkart", ...)` (ingest + tfidf/minilm/effnet_lite0 features, cached under
--workspaces) and is copied to a scratch folder under --work, so the cache is never modified. 5% of the labels
(seed 0) are flipped, each to a different category chosen uniformly among the other ones, by upserting the
modified frame as the SOURCE (`Workspace.upsert_items`). `quality_workspace(ws, ["effnet_lite0", "minilm"],
duplicates=None)` (near-duplicates play no part in the labels queue) then feeds the `labels` queue, and a
simulated curator goes down it from the top: accept when the proposed label is the item's true label, else
reject, through `review.decide` (so every accept is a real edit). Reported: flips, flips in the queue (recall),
proposals that were right (precision), flips fixed after 25/50/100/200 decisions, fixed per 100 decisions,
median time of a `decide` call. Then a category model scored against the TRUE labels on the same 5 stratified
folds (seed 0): logistic regression on the concatenation of the per-row L2-normalised effnet_lite0 and minilm
vectors, the concatenation L2-normalised again, trained on (a) the noisy source labels, (b) the curated labels
after the queue, (c) the clean labels (the ceiling); and curata's own `tasks.runner.run(category)` once on the
curated workspace, whose `curation` block is quoted (its comparison is scored against the curated labels).

Part 2, write latency on a 100k-item workspace (--quick: 10k). A synthetic collection (`scale_store.synth_rows`,
50 labels, no features) is built once under --work through `Workspace.add_items` in 100k batches; every run
serves a fresh copy of it (no edits accumulate; the output says how many edits the copy had), with a synthetic
`reports/quality-latest.json` in the shape `quality_workspace` writes (via `Workspace.write_report`) naming
2,000 suspicious labels, so the `labels` queue has proposals. `curata serve --keys-file`, then, all open-loop
(latency counted from each request's scheduled send time, so queueing counts; 32 client threads):
  (a) baseline read: GET /v1/items?label=<label>&limit=50 at 50 req/s for 10 s (quick: 5 s)
  (b) POST /v1/edits, one random item, label + add_tags, at 50 req/s for 20 s (quick: 10 s)
  (a') the read of (a) again after the writes, 5 s (the cost of the fragments the edits left)
  (c) 100 sequential POST /v1/review/labels/decisions (quick: 40), accept and reject alternating, proposals
      taken from GET /v1/review/labels?limit=50 (its first call builds the queue: timed apart)
p50/p90/p99/max and the achieved rate of each. The client shares the 2 cores with the server: compare (b) with
(a) of the same run rather than across machines.

Targets: write p99 <= 50 ms at 50 req/s; review decision round trip p99 <= 100 ms. Part 1 has no pass/fail
target; its figures (recall, precision, fixed per 100 decisions, accuracy gained) are printed for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SEED = 0
FLIP_SHARE = 0.05
CHECKPOINTS = (25, 50, 100, 200)
SUSPICIOUS = 2_000
RATE = 50.0
KEY = "bench-key-0123456789abcdef"
HEADERS = {"X-API-Key": KEY}
TARGETS = {"write_p99_ms": 50.0, "review_p99_ms": 100.0}
BUILD_FORMAT = 1


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, -(-int(q * len(s)) // 100) - 1))]


def summary_ms(seconds: list[float]) -> dict:
    ms = [1000 * s for s in seconds]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99),
            "max_ms": max(ms) if ms else None}


# Part 1 ------------------------------------------------------------------------------------------------
def part1(args: argparse.Namespace) -> dict:
    from accuracy import prepare
    from curata.collection import COLUMNS
    from curata.quality.runs import quality_workspace
    from curata.review import build_queue, decide
    from curata.workspace import Workspace

    t0 = time.perf_counter()
    cached = prepare("flipkart", args.data, args.workspaces)
    if cached is None:
        return {"error": f"no flipkart data under {args.data}"}
    prepare_s = time.perf_counter() - t0
    scratch = args.work / "flipkart"
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(cached.root, scratch, ignore=shutil.ignore_patterns("reports", "cache", ".lock*"))
    ws = Workspace(scratch)
    out: dict = {"prepare_s": round(prepare_s, 1), "workspace": str(scratch)}

    # Flip 5% of the labels in the source.
    frame = ws.collection.read(COLUMNS)
    frame = frame[frame["label"].notna()].reset_index(drop=True)
    truth = dict(zip(frame["id"], frame["label"], strict=True))
    classes = sorted(set(truth.values()))
    rng = np.random.default_rng(SEED)
    n_flip = round(FLIP_SHARE * len(frame))
    picked = rng.choice(len(frame), n_flip, replace=False)
    noisy = frame.copy()
    for i in picked:
        others = [c for c in classes if c != frame.at[i, "label"]]
        noisy.at[i, "label"] = others[rng.integers(len(others))]
    flipped = set(frame["id"].iloc[picked])
    up = ws.upsert_items(noisy[COLUMNS], "bench: 5% label noise")
    out.update(items=len(frame), classes=len(classes), flips=n_flip, upsert_updated=up.updated)

    print(f"  flipped {n_flip} of {len(frame)} labels; quality run ...", flush=True)
    t = time.perf_counter()
    quality = quality_workspace(ws, ["effnet_lite0", "minilm"], duplicates=None)
    out["quality_s"] = round(time.perf_counter() - t, 1)
    out["quality_oof_accuracy"] = quality["labels"]["out_of_fold_accuracy"]

    t = time.perf_counter()
    queue = build_queue(ws, "labels")
    out["queue_build_ms"] = round(1000 * (time.perf_counter() - t), 1)
    proposals = queue.proposals
    in_queue = {p.item for p in proposals} & flipped
    right = [p for p in proposals if p.value == truth[p.item]]
    out.update(proposals=len(proposals), flips_in_queue=len(in_queue), recall=len(in_queue) / max(1, n_flip),
               right_proposals=len(right), precision=len(right) / max(1, len(proposals)),
               flips_in_queue_wrong_suggestion=len(in_queue - {p.item for p in right}))

    print(f"  {len(proposals)} proposals; the curator decides them all ...", flush=True)
    # The curator: top of the queue each time, accept when right, else reject.
    decide_s, build_s, fixed_after, fixed = [], [], [], 0
    while True:
        t = time.perf_counter()
        top = build_queue(ws, "labels").proposals
        build_s.append(time.perf_counter() - t)
        if not top:
            break
        p = top[0]
        verdict = "accept" if p.value == truth[p.item] else "reject"
        t = time.perf_counter()
        decide(ws, p.id, verdict, "bench", "labels")
        decide_s.append(time.perf_counter() - t)
        fixed += verdict == "accept"
        fixed_after.append(fixed)
    decisions = len(decide_s)
    now = ws.items(["id", "label", "source_label", "curated"])
    really_fixed = sum(1 for i, lab in zip(now["id"], now["label"], strict=True) if i in flipped and lab == truth[i])
    wrongly_changed = sum(1 for i, lab in zip(now["id"], now["label"], strict=True)
                          if i not in flipped and lab != truth[i])
    out.update(decisions=decisions, fixed=really_fixed, wrongly_changed=wrongly_changed,
               fixed_after={str(k): fixed_after[min(k, decisions) - 1] if decisions else 0 for k in CHECKPOINTS},
               fixed_per_100_decisions=100 * fixed / max(1, decisions),
               fixed_per_100_first_100=100 * fixed_after[min(100, decisions) - 1] / min(100, decisions)
               if decisions else 0.0,
               decide_ms=summary_ms(decide_s), queue_read_ms=summary_ms(build_s))

    # Accuracy against the true labels, same folds for every training target.
    out["accuracy"] = accuracy_before_after(ws, now, truth, noisy)

    # curata's own training on the curated workspace: its curation block.
    print("  curata train category on the curated workspace ...", flush=True)
    from curata.tasks.runner import TrainOptions, run

    t = time.perf_counter()
    try:
        result = run(ws, TrainOptions(task="category", folds=5, seed=0, name="bench-curate"), save=False)
        out["curata_train"] = {"seconds": round(time.perf_counter() - t, 1), "table": result.table(),
                               "curation": result.curation}
    except Exception as e:  # the queue's figures stand without it
        out["curata_train"] = {"seconds": round(time.perf_counter() - t, 1), "error": f"{type(e).__name__}: {e}",
                               "curation": None}
    return out


def accuracy_before_after(ws, now, truth: dict, noisy) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.model_selection import StratifiedKFold

    from curata.features.engine import load_matrix, make_extractor

    items = ws.items()
    blocks, ok = [], np.ones(len(items), bool)
    for name in ("effnet_lite0", "minilm"):
        matrix, errors = load_matrix(ws, make_extractor(name), items)
        ok &= np.array([e is None for e in errors], bool)
        matrix = np.asarray(matrix, np.float64)
        blocks.append(matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12))
    x = np.hstack(blocks)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    ids = items["id"].to_numpy()
    x, ids = x[ok], ids[ok]
    source = dict(zip(noisy["id"], noisy["label"], strict=True))
    curated = dict(zip(now["id"], now["label"], strict=True))
    y_true = np.array([truth[i] for i in ids], dtype=object)
    targets = {"noisy source": np.array([source[i] for i in ids], dtype=object),
               "curated": np.array([curated[i] for i in ids], dtype=object), "clean (ceiling)": y_true}
    folds = list(StratifiedKFold(5, shuffle=True, random_state=SEED).split(x, y_true))
    out: dict = {"items": len(ids), "missing_vectors": int((~ok).sum()),
                 "model": "LogisticRegression(C=1, max_iter=2000) on L2(concat(L2 effnet_lite0, L2 minilm))"}
    for name, y in targets.items():
        acc, f1 = [], []
        for train, test in folds:
            model = LogisticRegression(C=1.0, max_iter=2000).fit(x[train], y[train].astype(str))
            pred = model.predict(x[test])
            acc.append(accuracy_score(y_true[test].astype(str), pred))
            f1.append(f1_score(y_true[test].astype(str), pred, average="macro"))
        out[name] = {"accuracy": float(np.mean(acc)), "accuracy_std": float(np.std(acc)),
                     "macro_f1": float(np.mean(f1)), "wrong_training_labels": int((y != y_true).sum())}
    return out


# Part 2 ------------------------------------------------------------------------------------------------
def ensure_built(work: Path, n: int, rebuild: bool) -> dict:
    from curata.workspace import Workspace
    from scale_store import synth_rows, write_png

    base = work / f"base-{n}"
    marker = base / "bench-build.json"
    if rebuild:
        shutil.rmtree(base, ignore_errors=True)
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("format") == BUILD_FORMAT and info.get("n") == n:
            return {**info, "cached": True}
    shutil.rmtree(base, ignore_errors=True)
    print(f"building {n:,} synthetic items in {base} ...", flush=True)
    image = work / "bench-8x8.png"
    work.mkdir(parents=True, exist_ok=True)
    write_png(image, 0)
    ws = Workspace(base).create()
    t = time.perf_counter()
    for start in range(0, n, 100_000):
        ws.add_items(synth_rows(start, min(n, start + 100_000), str(image)), "bench build")
    info = {"n": n, "format": BUILD_FORMAT, "build_s": round(time.perf_counter() - t, 1),
            "items": ws.collection.count()}
    marker.write_text(json.dumps(info))
    return {**info, "cached": False}


def write_quality(ws, n: int) -> int:
    """A quality run in the shape `quality_workspace` writes, with SUSPICIOUS suspicious labels."""
    from scale_store import N_LABELS, label_index

    rng = np.random.default_rng([SEED, 7])
    picked = np.sort(rng.choice(n, min(SUSPICIOUS, n), replace=False))
    labels = label_index(picked)
    shift = rng.integers(1, N_LABELS, len(picked))
    own = rng.uniform(0.02, 0.3, len(picked))
    other = np.minimum(0.97, own + rng.uniform(0.05, 0.6, len(picked)))
    rows = [{"id": f"synth/{i:07d}", "label": f"label_{a:02d}", "suggested": f"label_{(a + s) % N_LABELS:02d}",
             "label_probability": round(float(p), 4), "suggested_probability": round(float(q), 4),
             "margin": round(float(q - p), 4)}
            for i, a, s, p, q in zip(picked.tolist(), labels.tolist(), shift.tolist(), own, other, strict=True)]
    rows.sort(key=lambda r: -r["margin"])
    classes = [f"label_{k:02d}" for k in range(N_LABELS)]
    summary = {"target": "label", "features": ["effnet_lite0"], "items": n, "skipped": {"unlabelled": 0},
               "training_data": {"mode": "all", "rows_used": n, "rows_total": n, "budget_bytes": 0},
               "memory": {"mode": "in_memory", "budget_bytes": 0},
               "labels": {"items": n, "folds": 5, "classes": classes, "thresholds": {c: 0.5 for c in classes},
                          "out_of_fold_accuracy": 0.9, "suspicious": rows, "notes": []},
               "outliers": [], "notes": [], "duplicates": None}
    ws.write_report("quality", summary)
    return len(rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=HEADERS)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def open_loop(client, make_request, rate: float, seconds: float, workers: int = 32) -> dict:
    """Send int(rate * seconds) requests on a fixed schedule; latency from each one's scheduled time."""
    n = int(rate * seconds)
    done: list = [None] * n
    start = time.perf_counter() + 0.05

    def job(k: int, due: float) -> None:
        method, url, body = make_request(k)
        try:
            r = client.request(method, url, json=body, headers=HEADERS)
            code = r.status_code
        except Exception as e:
            code = type(e).__name__
        done[k] = (due, time.perf_counter(), code)

    with ThreadPoolExecutor(workers) as pool:
        for k in range(n):
            due = start + k / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(job, k, due)
    ok = [d for d in done if d is not None and d[2] == 200]
    errors: dict = {}
    for d in done:
        if d is None or d[2] != 200:
            key = "lost" if d is None else str(d[2])
            errors[key] = errors.get(key, 0) + 1
    end = max((d[1] for d in done if d is not None), default=start)
    return {**summary_ms([d[1] - d[0] for d in ok]), "sent": n, "ok": len(ok), "errors": errors,
            "target_rate": rate, "achieved_rate": round(len(ok) / max(1e-9, end - start), 1)}


def part2(args: argparse.Namespace) -> dict:
    import httpx

    from curata.curation import Curation
    from curata.workspace import Workspace
    from scale_store import N_LABELS, stop_server

    n = 10_000 if args.quick else 100_000
    read_s, write_s, after_s, reviews = (5, 10, 3, 40) if args.quick else (10, 20, 5, 100)
    build = ensure_built(args.work, n, args.rebuild)
    run_ws = args.work / f"run-{n}"
    shutil.rmtree(run_ws, ignore_errors=True)
    t = time.perf_counter()
    shutil.copytree(args.work / f"base-{n}", run_ws)
    out: dict = {"items": n, "build": build, "copy_s": round(time.perf_counter() - t, 1)}
    ws = Workspace(run_ws)
    out["edits_before"] = Curation(ws).count()
    out["suspicious"] = write_quality(ws, n)
    keys = args.work / "keys.json"
    keys.write_text(json.dumps({"keys": [{"name": "bench", "key": KEY, "scopes": ["read", "write"]}]}))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = args.work / f"serve-{n}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("CURATA_API_KEY", "CURATA_WORKSPACE")}
    exe = Path(sys.executable).with_name("curata")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(exe), "serve", "-w", str(run_ws), "--port", str(port), "--keys-file",
                                 str(keys), "--log-level", "warning"], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        while True:
            if proc.poll() is not None:
                return {**out, "error": f"server exited {proc.returncode}: see {log}"}
            if time.perf_counter() - t0 > 180:
                return {**out, "error": "not ready after 180 s"}
            try:
                if _get(f"{base}/v1/ready", 10)[0] == 200:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.2)
        out["ready_s"] = round(time.perf_counter() - t0, 1)
        rng = np.random.default_rng([SEED, 11])
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        with httpx.Client(base_url=base, timeout=60, limits=limits) as client:
            client.get("/v1/items", params={"label": "label_00", "limit": 50}, headers=HEADERS)  # warm, untimed

            def read(k: int):
                return "GET", f"/v1/items?label=label_{k % N_LABELS:02d}&limit=50", None

            picks = rng.integers(0, n, int(RATE * write_s))

            def write(k: int):
                return "POST", "/v1/edits", {"ids": [f"synth/{int(picks[k]):07d}"],
                                             "changes": {"label": f"edited_{k % 5}", "add_tags": [f"bench={k}"]},
                                             "why": "bench"}

            print(f"  (a) reads at {RATE:.0f}/s for {read_s} s ...", flush=True)
            out["read"] = open_loop(client, read, RATE, read_s)
            print(f"  (b) writes at {RATE:.0f}/s for {write_s} s ...", flush=True)
            out["write"] = open_loop(client, write, RATE, write_s)
            print(f"  (a') reads again for {after_s} s ...", flush=True)
            out["read_after"] = open_loop(client, read, RATE, after_s)
            print(f"  (c) {reviews} review decisions ...", flush=True)
            out["review"] = review_round_trips(client, reviews)
        out["server_rss_mb"] = _rss(proc.pid)
        out["edits_after"] = Curation(ws).count()
        return out
    finally:
        stop_server(proc)


def _rss(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def review_round_trips(client, count: int) -> dict:
    t = time.perf_counter()
    first = client.get("/v1/review/labels", params={"limit": 50}, headers=HEADERS)
    first_ms = 1000 * (time.perf_counter() - t)
    if first.status_code != 200:
        return {"error": f"GET /v1/review/labels answered {first.status_code}: {first.text[:200]}"}
    left_at_start = first.json()["left"]
    pending = [p["id"] for p in first.json()["proposals"]]
    times, reads, codes = [], [], {}
    accepted = 0
    for k in range(count):
        if not pending:
            t = time.perf_counter()
            got = client.get("/v1/review/labels", params={"limit": 50}, headers=HEADERS)
            reads.append(time.perf_counter() - t)
            pending = [p["id"] for p in got.json()["proposals"]]
            if not pending:
                break
        verdict = "accept" if k % 2 == 0 else "reject"
        t = time.perf_counter()
        r = client.post("/v1/review/labels/decisions", json={"proposal_id": pending.pop(0), "decision": verdict},
                        headers=HEADERS)
        times.append(time.perf_counter() - t)
        codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
        accepted += r.status_code == 200 and verdict == "accept"
    return {**summary_ms(times), "first_queue_get_ms": round(first_ms, 1), "queue_get": summary_ms(reads),
            "left_at_start": left_at_start, "codes": codes, "accepted": accepted}


# Report ------------------------------------------------------------------------------------------------
def _f(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def report1(r: dict) -> list[str]:
    if "error" in r:
        return [f"part 1: {r['error']}"]
    lines = ["", "Part 1: label noise fixed by the review queue (flipkart)", "-" * 64,
             f"items {r['items']}, {r['classes']} classes; flipped {r['flips']} labels ({FLIP_SHARE:.0%}, seed {SEED})"
             f"; quality run {r['quality_s']} s (out-of-fold accuracy {r['quality_oof_accuracy']:.3f})",
             f"{'proposals in the labels queue':<44} {r['proposals']}",
             f"{'flips in the queue (recall)':<44} {r['flips_in_queue']}/{r['flips']} = {r['recall']:.3f}",
             f"{'proposals that were right (precision)':<44} {r['right_proposals']}/{r['proposals']} = "
             f"{r['precision']:.3f}",
             f"{'flips in the queue, wrong label suggested':<44} {r['flips_in_queue_wrong_suggestion']}",
             f"{'decisions until the queue was empty':<44} {r['decisions']}"]
    for k in CHECKPOINTS:
        note = " (queue exhausted)" if k > r["decisions"] else ""
        lines.append(f"{'flips fixed after ' + str(k) + ' decisions':<44} {r['fixed_after'][str(k)]}{note}")
    lines += [f"{'flips fixed in the end / other labels changed':<44} {r['fixed']} / {r['wrongly_changed']}",
              f"{'fixed per 100 decisions (all / first 100)':<44} {r['fixed_per_100_decisions']:.1f} / "
              f"{r['fixed_per_100_first_100']:.1f}",
              f"{'review.decide ms p50 / p99 / max':<44} {_f(r['decide_ms']['p50_ms'])} / "
              f"{_f(r['decide_ms']['p99_ms'])} / {_f(r['decide_ms']['max_ms'])}",
              f"{'build_queue ms p50 (first build)':<44} {_f(r['queue_read_ms']['p50_ms'])} "
              f"({r['queue_build_ms']})", ""]
    acc = r["accuracy"]
    lines.append(f"category model vs TRUE labels, 5 stratified folds, seed {SEED}: {acc['model']}")
    lines.append(f"  {'trained on':<18} {'accuracy':>16} {'macro-F1':>9} {'wrong train labels':>19}")
    for name in ("noisy source", "curated", "clean (ceiling)"):
        a = acc[name]
        lines.append(f"  {name:<18} {a['accuracy']:>9.4f}±{a['accuracy_std']:.4f} {a['macro_f1']:>9.4f} "
                     f"{a['wrong_training_labels']:>19}")
    cur = r["curata_train"]
    lines.append(f"curata train category (curated workspace, {cur['seconds']} s): curation block:")
    lines.append("  " + (cur["error"] if "error" in cur else json.dumps(cur["curation"], default=str)))
    return lines


def report2(r: dict) -> tuple[list[str], list[str]]:
    if "error" in r:
        return [f"part 2: {r['error']}"], []
    b = r["build"]
    lines = ["", f"Part 2: write latency on a {r['items']:,}-item workspace (curata serve)", "-" * 64,
             f"build {'cached' if b['cached'] else str(b['build_s']) + ' s'}; fresh copy {r['copy_s']} s, "
             f"{r['edits_before']} edits in it before the run, {r['edits_after']} after; server ready "
             f"{r['ready_s']} s, RSS {_f(r.get('server_rss_mb'), '.0f')} MB; {r['suspicious']} suspicious labels",
             f"{'route':<40} {'sent':>5} {'ok':>5} {'rate/s':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'max':>7}"]
    for key, name in (("read", "(a) GET /v1/items?label (baseline)"), ("write", "(b) POST /v1/edits"),
                      ("read_after", "(a') GET /v1/items?label after writes")):
        m = r[key]
        lines.append(f"{name:<40} {m['sent']:>5} {m['ok']:>5} {m['achieved_rate']:>7.1f} {_f(m['p50_ms']):>7} "
                     f"{_f(m['p90_ms']):>7} {_f(m['p99_ms']):>7} {_f(m['max_ms']):>7}"
                     + (f"  errors {m['errors']}" if m["errors"] else ""))
    v = r["review"]
    if "error" in v:
        lines.append(f"(c) review: {v['error']}")
        return lines, []
    lines.append(f"{'(c) POST review decision (sequential)':<40} {v['n']:>5} {v['codes'].get('200', 0):>5} "
                 f"{'':>7} {_f(v['p50_ms']):>7} {_f(v['p90_ms']):>7} {_f(v['p99_ms']):>7} {_f(v['max_ms']):>7}"
                 + (f"  codes {v['codes']}" if set(v["codes"]) != {"200"} else ""))
    lines.append(f"    GET /v1/review/labels: first (builds the queue) {v['first_queue_get_ms']:.0f} ms, later p50 "
                 f"{_f(v['queue_get']['p50_ms'])} ms; {v['left_at_start']} open at start")
    ratio = (r["write"]["p50_ms"] or 0) / max(1e-9, r["read"]["p50_ms"] or 0)
    lines.append(f"    write p50 / read p50 (same run) = {ratio:.1f}x")
    checks = []
    for name, value, target, ok_rate in (
            ("write p99 at 50 req/s", r["write"]["p99_ms"], TARGETS["write_p99_ms"],
             r["write"]["ok"] == r["write"]["sent"]),
            ("review round trip p99", v["p99_ms"], TARGETS["review_p99_ms"], True)):
        met = value is not None and value <= target and ok_rate
        checks.append(f"{name}: {_f(value)} ms (target <= {target:.0f} ms) {'met' if met else 'NOT met'}")
    return lines, checks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", "../shared/data")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/curata-bench-curate"))
    parser.add_argument("--workspaces", type=Path, default=Path("benchmarks/workspaces"),
                        help="where accuracy.prepare caches the flipkart workspace")
    parser.add_argument("--quick", action="store_true", help="10k items and shorter runs in part 2 (< 3 min)")
    parser.add_argument("--parts", default="1,2", help="which parts to run: 1, 2 or 1,2")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the synthetic collection of part 2")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/curate.json"))
    args = parser.parse_args()
    args.data, args.workspaces = args.data.resolve(), args.workspaces.resolve()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    parts = {p.strip() for p in args.parts.split(",")}
    results: dict = {"quick": args.quick, "targets": TARGETS, "cpus": os.cpu_count()}
    lines, checks = [], []
    started = time.perf_counter()
    if "1" in parts:
        print("part 1: flipkart label noise and the review queue ...", flush=True)
        t = time.perf_counter()
        results["part1"] = part1(args)
        results["part1"]["seconds"] = round(time.perf_counter() - t, 1)
        lines += report1(results["part1"])
    if "2" in parts:
        print("part 2: write latency over HTTP ...", flush=True)
        t = time.perf_counter()
        results["part2"] = part2(args)
        results["part2"]["seconds"] = round(time.perf_counter() - t, 1)
        more, checks = report2(results["part2"])
        lines += more
    results["checks"] = checks
    results["seconds"] = round(time.perf_counter() - started, 1)
    print("\n".join(lines))
    if checks:
        print("\nTargets:")
        print("\n".join("  " + c for c in checks))
    print(f"\ntotal {results['seconds']} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
