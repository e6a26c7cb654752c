"""The Ray engine's driver as collections grow, and a two-node cluster on one machine.

    python benchmarks/scale_cluster.py [--sizes 1000,10000,100000] [--nodes 2] [--node-items 4000]
                                       [--out benchmarks/results/scale-cluster.json]

Input: synthetic tiny images this script draws (8x8 PNGs, each a different colour pattern so no two share a
content hash) into a temporary folder, listed in a CSV.

1. Driver memory. For each size, in a fresh process each: `curata ingest --engine ray` into an empty workspace,
   then `curata features -e color_stats --engine ray`, both on a local Ray runtime of 2 CPUs. The peak resident
   memory of the driver process (`ru_maxrss`; Ray's workers and daemons are other processes) is reported with
   its growth per 1,000 items between sizes. The features driver commits fragments the actors wrote and never
   holds a vector; what it still holds per item is the plan (content hash and image path of each item to do).
   The ingest driver reads the whole source and commits it once, so its records are in memory.
2. Two nodes. A head and a second node (`curata.scale.local_cluster`: separate `ray start` processes, 2
   logical CPUs each) run `ingest` and `features -e color_stats` with `--ray-address` on --node-items images;
   the same commands on a local 2-CPU runtime and on the local engine run in the same script. Reported: the
   nodes that did work, end-to-end items/s, and whether items and vectors equal the local engine's. On one
   2-core machine the two nodes share the same two cores (4 logical CPUs on 2 physical ones), so the rate
   shows the cluster's overhead, not a speed-up.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def draw_tiny(folder: Path, n: int) -> Path:
    """n distinct 8x8 PNGs (drawn once; a larger n reuses the smaller's files) and a CSV of them."""
    from PIL import Image

    images = folder / "img"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = images / f"{i:06d}.png"
        if path.exists():
            continue
        pixels = np.zeros((8, 8, 3), np.uint8)
        pixels[..., 0], pixels[..., 1], pixels[..., 2] = i % 251, (i // 251) % 251, (i * 7) % 256
        pixels[i % 8, (i // 8) % 8] = 255 - pixels[0, 0]
        Image.fromarray(pixels).save(path)
    table = folder / f"items-{n}.csv"
    with table.open("w") as fh:
        fh.write("id,image,label\n")
        fh.writelines(f"{i},img/{i:06d}.png,{'abc'[i % 3]}\n" for i in range(n))
    return table


def cli(args: list[str], env: dict[str, str] | None = None) -> dict:
    """`curata ARGS --json` in a fresh process; its JSON, seconds and peak RSS in MB."""
    code = ("import json, resource, sys\nfrom curata.cli import app\n"
            "try:\n    app(sys.argv[1:], standalone_mode=False)\n"
            "finally:\n    print('\\nRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args, "--json"], capture_output=True, text=True,
                          env={**os.environ, "CURATA_FEATURE_CACHE": "off", **(env or {})}, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"curata {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    rss = [line for line in done.stderr.splitlines() if line.startswith("RSS ")]
    return {"out": json.loads(done.stdout), "seconds": round(seconds, 2),
            "peak_rss_mb": round(int(rss[-1].split()[1]) / 1024, 1)}  # ru_maxrss is in KB on Linux


def driver_memory(tmp: Path, sizes: list[int]) -> list[dict]:
    rows = []
    for n in sizes:
        table = draw_tiny(tmp / "tiny", n)
        ws = str(tmp / f"ws-{n}")
        ingested = cli(["ingest", str(table), "-w", ws, "--engine", "ray", "--ray-cpus", "2"])
        features = cli(["features", "-w", ws, "-e", "color_stats", "--engine", "ray", "--ray-cpus", "2"])
        (run,) = features["out"]
        row = {"items": n, "ingest_ok": ingested["out"]["summary"]["ok"], "ingest_s": ingested["seconds"],
               "ingest_driver_peak_rss_mb": ingested["peak_rss_mb"], "features_computed": run["computed"],
               "features_s": features["seconds"], "features_driver_peak_rss_mb": features["peak_rss_mb"]}
        rows.append(row)
        print(f"  {n:>7} items: ingest {row['ingest_s']:>6.1f} s, driver peak "
              f"{row['ingest_driver_peak_rss_mb']:>6.0f} MB; features {row['features_s']:>6.1f} s, driver peak "
              f"{row['features_driver_peak_rss_mb']:>6.0f} MB",
              flush=True)
    return rows


def two_nodes(tmp: Path, n: int, nodes: int) -> dict:
    from curata.features.engine import load_matrix, make_extractor
    from curata.scale.local_cluster import local_cluster
    from curata.workspace import Workspace

    table = draw_tiny(tmp / "tiny", n)
    runs: dict[str, dict] = {}
    for name, extra in (("local engine", ["--engine", "local"]), ("Ray, local runtime, 2 CPUs",
                                                                  ["--engine", "ray", "--ray-cpus", "2"])):
        ws = str(tmp / f"nodes-{len(runs)}")
        runs[name] = {"ingest": cli(["ingest", str(table), "-w", ws, *extra]),
                      "features": cli(["features", "-w", ws, "-e", "color_stats", *extra]), "workspace": ws}
    with local_cluster(tmp / "ray-logs", nodes=nodes, cpus_per_node=2) as (address, env):
        ws = str(tmp / "nodes-cluster")
        extra = ["--engine", "ray", "--ray-address", address]
        runs[f"Ray, {nodes} nodes x 2 CPUs"] = {"ingest": cli(["ingest", str(table), "-w", ws, *extra], env),
                                                "features": cli(["features", "-w", ws, "-e", "color_stats", *extra],
                                                                env), "workspace": ws}
    local_ws = Workspace(runs["local engine"]["workspace"])
    expected_items = local_ws.items(["id", "image_sha256"]).sort_values("id", ignore_index=True)
    expected_vectors = load_matrix(local_ws, make_extractor("color_stats"))[0]
    out = {"items": n, "nodes": nodes, "runs": []}
    for name, run in runs.items():
        ws = Workspace(run["workspace"])
        items = ws.items(["id", "image_sha256"]).sort_values("id", ignore_index=True)
        vectors = load_matrix(ws, make_extractor("color_stats"))[0]
        (features,) = run["features"]["out"]
        entry = {"engine": name, "ingest_items_per_s": round(n / run["ingest"]["seconds"], 1),
                 "ingest_nodes": run["ingest"]["out"]["summary"].get("nodes"),
                 "features_items_per_s": round(n / run["features"]["seconds"], 1),
                 "features_nodes": features.get("nodes"),
                 "items_equal_local": bool(items.equals(expected_items)),
                 "vectors_equal_local": bool(np.allclose(vectors, expected_vectors, rtol=1e-5, atol=1e-6))}
        out["runs"].append(entry)
        print(f"  {name:<28} ingest {entry['ingest_items_per_s']:>7.1f} items/s on {entry['ingest_nodes'] or '-'} "
              f"node(s), features {entry['features_items_per_s']:>7.1f} items/s on {entry['features_nodes'] or '-'} "
              f"node(s); equal to local: items {entry['items_equal_local']}, vectors {entry['vectors_equal_local']}",
              flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000", help="collection sizes for the driver-memory runs")
    parser.add_argument("--nodes", type=int, default=2, help="Ray nodes of the one-machine cluster (default 2)")
    parser.add_argument("--node-items", type=int, default=4000, help="images for the multi-node runs")
    parser.add_argument("--skip", choices=["memory", "nodes"], action="append", default=[],
                        help="leave out a part (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scale-cluster.json"))
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    result: dict = {"cpu_count": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="curata-scale-cluster-") as name:
        tmp = Path(name)
        if "memory" not in args.skip:
            print(f"driver memory, Ray engine on a local 2-CPU runtime, sizes {sizes}", flush=True)
            rows = driver_memory(tmp, sizes)
            result["driver_memory"] = rows
            print("\n| items | ingest s | ingest driver peak MB | features s | features driver peak MB |")
            print("|---|---|---|---|---|")
            for r in rows:
                print(f"| {r['items']:,} | {r['ingest_s']} | {r['ingest_driver_peak_rss_mb']} | {r['features_s']} | "
                      f"{r['features_driver_peak_rss_mb']} |")
            for a, b in itertools.pairwise(rows):
                per_k = {stage: round((b[f"{stage}_driver_peak_rss_mb"] - a[f"{stage}_driver_peak_rss_mb"])
                                      / ((b["items"] - a["items"]) / 1000), 3) for stage in ("ingest", "features")}
                result.setdefault("growth_mb_per_1000_items", []).append({"from": a["items"], "to": b["items"],
                                                                          **per_k})
                print(f"driver growth {a['items']:,} -> {b['items']:,}: ingest {per_k['ingest']} MB, features "
                      f"{per_k['features']} MB per 1,000 items")
        if "nodes" not in args.skip:
            print(f"\n{args.nodes} Ray nodes on this machine, {args.node_items} images", flush=True)
            result["multi_node"] = two_nodes(tmp, args.node_items, args.nodes)
    result["max_rss_of_this_script_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
