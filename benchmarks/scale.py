"""Feature extraction (or ingest) throughput: the local engine against the Ray engine on 1 and 2 CPUs, same data,
one run.

    python benchmarks/scale.py [--data ../shared/data] [--limit 300] [--extractors color_stats,effnet_lite0]
                               [--cpus 1,2] [--price 0.045] [--out benchmarks/results/scale.json]
    python benchmarks/scale.py --stage ingest [--collection cryptopunks --limit 3000] [--cpus 2]

`--stage ingest` measures `curata ingest` instead (reading the table, verifying and hashing every image, one
commit), local threads against `--engine ray` tasks; its rows are named "ingest" in place of an extractor.

Input: the first --limit images of `flipkart` (JPEGs up to 640 px, from --data / CURATA_DATA; another
collection with --collection, e.g. cryptopunks for more than flipkart's 1,047 images), ingested
into a workspace in a temporary folder beforehand (not timed). Every measurement computes the extractor
for all items from an empty feature store, in its own subprocess (so one run's warm caches and threads do
not help the next):

  local      `curata.features.engine.compute` (threads in one process, all cores)
  ray-N      `curata.scale.compute_ray` on a fresh local Ray runtime of N CPUs, default pool (one actor
             per CPU); the runtime's start is timed separately and not counted

Each configuration runs twice, on the first --limit/3 images and on all --limit, so that fixed costs
(actor start, imports, model load, first batch) cancel in the differences:

  marginal items/s     (n_all - n_third) / (T_all - T_third), wall time: the rate a long job converges to
  core-s/image         (C_all - C_third) / (n_all - n_third), where C is CPU time (user + system, all
                       threads) of the process and, for Ray, of its actors (read from /proc); Ray's own
                       daemons (raylet, GCS) are left out. CPU time, unlike wall time, hardly moves when
                       other work shares the machine, so this is the figure the cost estimate uses.

End-to-end rates and the time to the first result are reported too. The marginal CPU cost times 7.5 M
(NFT1000's images), 10 M and 100 M items and a vCPU-hour price gives the table printed at the end (the wall
time on 64 vCPUs there assumes they are kept busy). Absolute times on a shared machine are noisy: compare ratios
from the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

COST_SIZES = (7_500_000, 10_000_000, 100_000_000)  # NFT1000's image count, then 10 M and 100 M items
INGEST = "ingest"  # the name of `--stage ingest` rows, in place of an extractor's


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user + system CPU seconds) of a process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _watch_actors(root: int, seen: dict[int, float], stop: threading.Event) -> None:
    """Record the CPU time of this run's Ray workers (actors and tasks: processes named `ray::...` descending from
    `root`) until `stop`; a worker's last reading before it exits is its total, give or take one polling
    interval. Ray's daemons (raylet, GCS) are not `ray::` processes and are left out."""
    while not stop.wait(0.1):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if not (entry / "cmdline").read_bytes().startswith(b"ray::"):
                    continue
            except OSError:
                continue
            pid = int(entry.name)
            stat = _proc_stat(pid)
            if stat is None:
                continue
            parent, cpu = stat
            while parent not in (0, 1, root):  # only descendants of this benchmark child
                up = _proc_stat(parent)
                parent = up[0] if up else 0
            if parent == root:
                seen[pid] = cpu


def _child(engine: str, name: str, workspace: str) -> dict:
    """One measurement in this (fresh) process; prints its result as JSON."""
    from curata.features.engine import compute, make_extractor
    from curata.ingest.pipeline import IngestOptions, ingest
    from curata.workspace import Workspace

    ws = Workspace(workspace)
    if name == INGEST:  # the table beside the workspace, into the empty workspace
        def work(clock: Any) -> Any:
            report = ingest(Path(workspace).parent / f"{Path(workspace).name}.csv", ws,
                            IngestOptions(engine="ray" if engine != "local" else "local", source_name="bench"),
                            reporter=clock)
            return SimpleNamespace(computed=len(report.ok), errors=len(report.errors))
    else:
        extractor = make_extractor(name)
        if name.startswith("effnet"):
            from curata.features.efficientnet import export_onnx

            export_onnx(extractor.variant)  # the one-off ONNX export is not what we measure

        def work(clock: Any) -> Any:
            if engine == "local":
                return compute(extractor, ws, reporter=clock)
            from curata.scale import compute_ray

            return compute_ray(extractor, ws, reporter=clock)
    stamps: list[float] = []

    class Clock:
        def task(self, description: str, total: int | None):
            return lambda n=1: stamps.append(time.perf_counter())

    startup = 0.0
    actors: dict[int, float] = {}
    if engine == "local":
        cpu0 = time.process_time()
        started = time.perf_counter()
        run = work(Clock())
    else:
        import ray

        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=int(engine.split("-")[1]), include_dashboard=False,
                 log_to_driver=False)
        startup = time.perf_counter() - t0
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_actors, args=(os.getpid(), actors, stop), daemon=True)
        watcher.start()
        cpu0 = time.process_time()
        started = time.perf_counter()
        run = work(Clock())
    seconds = time.perf_counter() - started
    driver_cpu = time.process_time() - cpu0
    if engine != "local":
        stop.set()
        watcher.join()
        ray.shutdown()
    return {"engine": engine, "extractor": name, "items": run.computed, "errors": run.errors,
            "seconds": round(seconds, 3), "runtime_start_s": round(startup, 2),
            "first_result_s": round((stamps[0] if stamps else started + seconds) - started, 2),
            "items_per_s": round(run.computed / seconds, 1),
            "cpu_seconds": round(driver_cpu + sum(actors.values()), 3), "actors_seen": len(actors)}


def _measure(engine: str, name: str, base: Path, tmp: Path, n: int) -> dict:
    import pandas as pd

    from curata.workspace import Workspace

    target = tmp / f"ws-{engine}-{name}-{n}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    if name == INGEST:  # an empty workspace and a table of the first n images to ingest into it
        pd.read_csv(tmp / "items.csv").head(n).to_csv(tmp / f"{target.name}.csv", index=False)
    else:
        Workspace(target).replace_items(Workspace(base).items().head(n))
    # The machine's shared feature cache off: every configuration computes every vector (the local engine
    # would otherwise copy what an earlier run on the same images left there).
    out = subprocess.run([sys.executable, __file__, "--child", engine, "--name", name, "--target", str(target)],
                         capture_output=True, text=True, check=False,
                         env={**os.environ, "CURATA_FEATURE_CACHE": "off"})
    if out.returncode != 0:
        raise RuntimeError(f"{engine} {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cores(engine: str) -> int:
    return (os.cpu_count() or 2) if engine == "local" else int(engine.split("-")[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", "../shared/data")),
                        help="folder holding flipkart/ (default: $CURATA_DATA or ../shared/data)")
    parser.add_argument("--limit", type=int, default=300, help="images measured (default 300)")
    parser.add_argument("--collection", default="flipkart", help="folder under --data with a labels.csv of "
                        "path,label (default flipkart: 1,047 JPEGs; cryptopunks has 10,000 small PNGs)")
    parser.add_argument("--stage", choices=["features", INGEST], default="features",
                        help="features (default): the extractors' throughput; ingest: verifying and hashing images")
    parser.add_argument("--extractors", default="color_stats,effnet_lite0", help="comma-separated extractors")
    parser.add_argument("--cpus", default="1,2", help="CPU counts of the local Ray runtimes compared")
    parser.add_argument("--price", type=float, default=0.045,
                        help="USD per vCPU-hour for the cost estimate (default 0.045: on-demand compute-optimised "
                             "x86 instances, e.g. AWS c7i.large at $0.089/h for 2 vCPU, us-east-1)")
    parser.add_argument("--out", type=Path, help="JSON written (default benchmarks/results/scale.json, or "
                        "scale-ingest.json with --stage ingest)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out = args.out or Path("benchmarks/results/" + ("scale-ingest.json" if args.stage == INGEST else "scale.json"))
    if args.child:
        print(json.dumps(_child(args.child, args.name, args.target)))
        return 0

    import pandas as pd

    from curata.ingest.pipeline import ingest
    from curata.workspace import Workspace

    folder = args.data / args.collection
    if not (folder / "labels.csv").is_file():
        print(f"skipped: {args.collection} not found under {args.data} (give --data or set CURATA_DATA)")
        return 0
    engines = ["local", *[f"ray-{n.strip()}" for n in args.cpus.split(",") if n.strip()]]
    names = [INGEST] if args.stage == INGEST else [n.strip() for n in args.extractors.split(",") if n.strip()]
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="curata-scale-") as tmp_name:
        tmp = Path(tmp_name)
        labels = pd.read_csv(folder / "labels.csv").head(args.limit)
        labels["path"] = [str((folder / p).resolve()) for p in labels["path"]]
        labels[["path", "label"]].to_csv(tmp / "items.csv", index=False)
        base = Workspace(tmp / "base")
        ingest(tmp / "items.csv", base)
        print(f"{len(base.items())} {args.collection} images; engines {', '.join(engines)}; "
              f"extractors {', '.join(names)}", flush=True)
        n_all = len(base.items())
        n_third = max(1, n_all // 3)
        for name in names:
            for engine in engines:
                small = _measure(engine, name, base.root, tmp, n_third)
                row = _measure(engine, name, base.root, tmp, n_all)
                row["cores"] = _cores(engine)
                extra = row["seconds"] - small["seconds"]
                row["marginal_items_per_s"] = round((n_all - n_third) / extra, 1) if extra > 0 else None
                # CPU time, unlike wall time, barely moves when other work shares the machine.
                extra_cpu = row["cpu_seconds"] - small["cpu_seconds"]
                row["core_seconds_per_image"] = round(extra_cpu / (n_all - n_third), 5) if extra_cpu > 0 else None
                row["third"] = small
                rows.append(row)
                print(f"  {name:<13} {engine:<7} {row['items_per_s']:>7.1f} items/s end-to-end, "
                      f"{row['marginal_items_per_s'] or float('nan'):>7.1f} marginal, {row['seconds']:>6.1f} s, "
                      f"first result after {row['first_result_s']:.1f} s (+{row['runtime_start_s']:.1f} s Ray start)",
                      flush=True)
    result = {"cpu_count": os.cpu_count(), "limit": args.limit, "price_per_vcpu_hour": args.price,
              "rows": rows, "ratios": {}, "cost": []}
    print("\n| extractor | engine | CPUs | items/s end-to-end | first result s | items/s marginal | x local "
          "(marginal) | core-s/image |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        local = next(r for r in rows if r["extractor"] == name and r["engine"] == "local")
        base_rate = local["marginal_items_per_s"]
        for r in (r for r in rows if r["extractor"] == name):
            rate = r["marginal_items_per_s"]
            ratio = round(rate / base_rate, 2) if base_rate and rate else None
            result["ratios"][f"{name}:{r['engine']}"] = ratio
            print(f"| {name} | {r['engine']} | {r['cores']} | {r['items_per_s']:.1f} | {r['first_result_s']:.1f} | "
                  f"{rate} | {ratio} | {r['core_seconds_per_image']} |")
    print(f"\nCost at ${args.price}/vCPU-hour, from the lowest measured marginal per-image CPU cost of the Ray engine "
          "(images already next to the workers, decoded at the extractor's size; 7.5 M = NFT1000):")
    print("| stage | core-s/image | images | vCPU-hours | cost USD | wall time on 64 vCPUs |")
    print("|---|---|---|---|---|---|")
    for name in names:
        costs = [r["core_seconds_per_image"] for r in rows if r["extractor"] == name and r["engine"] != "local"
                 and r["core_seconds_per_image"]]
        if not costs:
            continue
        per_image = min(costs)
        for images in COST_SIZES:
            hours = per_image * images / 3600
            entry = {"extractor": name, "images": images, "core_seconds_per_image": per_image,
                     "vcpu_hours": round(hours, 1), "usd": round(hours * args.price, 2),
                     "wall_hours_on_64_vcpus": round(hours / 64, 2)}
            result["cost"].append(entry)
            print(f"| {name} | {per_image:.5f} | {images / 1e6:g} M | {entry['vcpu_hours']:,.1f} | "
                  f"{entry['usd']:,.2f} | {entry['wall_hours_on_64_vcpus']:.2f} h |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
