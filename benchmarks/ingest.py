"""Ingest throughput and peak memory on real collections, against a naive baseline in the same run.

    python benchmarks/ingest.py [--data ../shared/data] [--out benchmarks/results/ingest.json]

For each collection (flipkart: 1047 JPEGs up to 640 px; cryptopunks: 10,000 24x24 RGBA PNGs):
- curata: `curata.ingest.pipeline.ingest` into a fresh workspace (parse, verify every image with a
  full decode, hash, write Parquet and the report);
- baseline: the naive loop (PIL open + full-size load + convert to RGB, one image at a time, sha256),
  which verifies nothing more and writes nothing.
Each run happens in its own subprocess so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COLLECTIONS = {"flipkart": {}, "cryptopunks": {"tags": "accessories"}}


def _child(mode: str, source: str, tags: str | None) -> None:
    """Run one measurement and print a JSON line: items, seconds, peak RSS."""
    started = time.perf_counter()
    if mode == "curata":
        from curata.ingest.pipeline import IngestOptions, ingest
        from curata.ingest.table import ColumnMap
        from curata.workspace import Workspace

        with tempfile.TemporaryDirectory() as tmp:
            report = ingest(source, Workspace(tmp), IngestOptions(columns=ColumnMap(tags=tags)))
            n, ok = len(report.entries), len(report.ok)
    else:
        import hashlib

        import pandas as pd
        from PIL import Image

        frame = pd.read_csv(Path(source) / "labels.csv")
        n = ok = 0
        for rel in frame["path"]:
            path = Path(source) / rel
            data = path.read_bytes()
            hashlib.sha256(data).hexdigest()
            with Image.open(path) as im:
                im.convert("RGB")
            n += 1
            ok += 1
    seconds = time.perf_counter() - started
    # VmHWM, not ru_maxrss: the latter survives fork+exec and would report the parent's peak.
    status = Path("/proc/self/status").read_text().splitlines()
    peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    print(json.dumps({"items": n, "ok": ok, "seconds": seconds, "peak_rss_mb": peak_mb}))


def measure(mode: str, source: Path, tags: str | None) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--source", str(source)]
    if tags:
        cmd += ["--tags", tags]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", "../shared/data")))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ingest.json"))
    parser.add_argument("--child", choices=["curata", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--source", help=argparse.SUPPRESS)
    parser.add_argument("--tags", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.source, args.tags)
        return 0
    if not args.data.is_dir():
        print(f"skipped: data folder {args.data} not found (pass --data or set CURATA_DATA)")
        return 0
    rows = []
    for name, opts in COLLECTIONS.items():
        source = args.data / name
        if not source.is_dir():
            print(f"skipped {name}: {source} not found")
            continue
        curata = measure("curata", source, opts.get("tags"))
        baseline = measure("baseline", source, None)
        rows.append({
            "collection": name,
            "items": curata["items"],
            "ok": curata["ok"],
            "curata_items_per_s": curata["items"] / curata["seconds"],
            "curata_peak_rss_mb": curata["peak_rss_mb"],
            "baseline_items_per_s": baseline["items"] / baseline["seconds"],
            "baseline_peak_rss_mb": baseline["peak_rss_mb"],
            "speed_ratio": baseline["seconds"] / curata["seconds"],
        })
    header = f"{'collection':<12} {'items':>6} {'ok':>6} {'curata it/s':>12} {'peak MB':>8} " \
             f"{'naive it/s':>11} {'peak MB':>8} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['collection']:<12} {r['items']:>6} {r['ok']:>6} {r['curata_items_per_s']:>12.0f} "
              f"{r['curata_peak_rss_mb']:>8.0f} {r['baseline_items_per_s']:>11.0f} {r['baseline_peak_rss_mb']:>8.0f} "
              f"{r['speed_ratio']:>5.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
