"""Images and the workspace on object storage against local disk: the same pipeline, stage by stage, in one run.

    python benchmarks/objectstore.py [--data ../shared/data] [--limit 500]
                                     [--out benchmarks/results/objectstore.json]

Input: the first --limit flipkart images (JPEGs up to 640 px). They are uploaded to a real S3-compatible server
this script starts on loopback (`moto_server`, from the dev dependencies), and listed twice: once as local paths,
once as `s3://` URIs. Three variants go through the same commands, each a fresh `curata` process with the shared
feature cache off, each into its own workspace:

  local          local images, local workspace folder
  s3-images      images read from the bucket, local workspace folder
  s3-workspace   images read from the bucket, and the workspace itself on it (`-w s3://bench/ws`): every table,
                 bundle, index, report and lock is an object

The stages:

  ingest     verify and hash every image (reads every object once)
  features   effnet_lite0 and color_stats, local engine (reads every object again)
  train      classify on effnet_lite0 (vectors only: no image is read)
  index      `index build` (zero-shot search index)
  search     `search --text` (vectors only)

Reported: seconds per stage for each, and the ratio. The server is on the same machine, so this measures what
reading through the S3 API costs (requests, signing, copies), not a network's latency: on a real bucket each
GET adds tens of milliseconds, which the feature engine's loader threads overlap.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("ingest", "features", "train", "index", "search")


def _moto(port: int, log: Path) -> subprocess.Popen:
    server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError(f"moto_server did not start: {log.read_text()[-1000:]}")
        time.sleep(0.2)
    return server


def _stage(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "curata.cli", *args], env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"curata {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def _pipeline(table: Path, workspace: Path | str, env: dict[str, str]) -> dict[str, float]:
    ws = ["-w", str(workspace), "--quiet"]
    commands = {
        "ingest": ["ingest", str(table), *ws],
        "features": ["features", "-e", "effnet_lite0,color_stats", *ws],
        "train": ["train", "classify", "--features", "effnet_lite0", *ws],
        "index": ["index", "build", "--model", "zeroshot", *ws],
        "search": ["search", "--text", "a red shirt", "--model", "zeroshot", "-w", str(workspace), "--json"],
    }
    return {stage: round(_stage(commands[stage], env), 2) for stage in STAGES}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", "../shared/data")),
                        help="folder holding flipkart/ (default: $CURATA_DATA or ../shared/data)")
    parser.add_argument("--limit", type=int, default=500, help="images (default 500)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/objectstore.json"))
    args = parser.parse_args()
    folder = args.data / "flipkart"
    if not (folder / "labels.csv").is_file():
        print(f"skipped: flipkart not found under {args.data} (give --data or set CURATA_DATA)")
        return 0
    try:
        import boto3
    except ImportError:
        print("skipped: boto3 / moto are not installed (pip install -e '.[dev]')")
        return 0
    import pandas as pd

    from curata.scale.local_cluster import free_ports

    (port,) = free_ports(1)
    aws = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ALLOW_HTTP": "true"}
    env = {**os.environ, **aws, "CURATA_FEATURE_CACHE": "off"}
    with tempfile.TemporaryDirectory(prefix="curata-objectstore-") as name:
        tmp = Path(name)
        server = _moto(port, tmp / "moto.log")
        try:
            client = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                                  aws_access_key_id="bench", aws_secret_access_key="bench-secret")
            client.create_bucket(Bucket="bench")
            labels = pd.read_csv(folder / "labels.csv").head(args.limit)
            local_paths = [str((folder / p).resolve()) for p in labels["path"]]
            for path in local_paths:
                client.upload_file(path, "bench", f"img/{Path(path).name}")
            base = labels[["label"]].assign(id=[Path(p).stem for p in local_paths])
            base.assign(image=local_paths).to_csv(tmp / "local.csv", index=False)
            base.assign(image=[f"s3://bench/img/{Path(p).name}" for p in local_paths]).to_csv(tmp / "s3.csv",
                                                                                             index=False)
            print(f"{len(labels)} flipkart images, on local disk and in s3://bench/img/ (moto_server on loopback)",
                  flush=True)
            times = {}
            for variant, table, workspace in (("local", "local", tmp / "ws-local"), ("s3-images", "s3", tmp / "ws-s3"),
                                              ("s3-workspace", "s3", "s3://bench/ws")):
                times[variant] = _pipeline(tmp / f"{table}.csv", workspace, env)
                print(f"  {variant:<12} " + ", ".join(f"{s} {t:.1f} s" for s, t in times[variant].items()),
                      flush=True)
        finally:
            server.terminate()
            server.wait(10)
    ratios = {variant: {s: round(times[variant][s] / times["local"][s], 2) for s in STAGES}
              for variant in ("s3-images", "s3-workspace")}
    print("\n| stage | local s | s3 images s | s3 images + workspace s | images / local | workspace / local |")
    print("|---|---|---|---|---|---|")
    for s in STAGES:
        print(f"| {s} | {times['local'][s]} | {times['s3-images'][s]} | {times['s3-workspace'][s]} | "
              f"{ratios['s3-images'][s]}x | {ratios['s3-workspace'][s]}x |")
    result = {"images": args.limit, "seconds": times, "ratio_over_local": ratios}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
