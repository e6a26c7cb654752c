"""Cross-modal retrieval (NFT1000 protocol) with the joint space curata learns on frozen encoders.

    python benchmarks/retrieval.py [--data ../shared/data] [--cached benchmarks/workspaces]
                                   [--work /tmp/curata-bench-retrieval] [--punks 2000] [--epochs 40]
                                   [--only cryptopunks,filthy_peasants,coco_mini,unseen]
                                   [--out benchmarks/results/retrieval.json]

Protocol (printed with the results):
  * data from --data / CURATA_DATA: `cryptopunks` (captions from the traits: type + accessories,
    `--captions attributes`), `filthy_peasants` (NFT1000 captions from the token metadata) and
    `coco_mini` (5 human captions per photo; 159 photos, a smoke check only). Cached workspaces with
    EfficientNet-Lite0 features are copied from --cached when present (never written to), else the
    folder is ingested; coco_mini is ingested with `--tags-col categories`.
  * cryptopunks is subsampled to --punks items (seeded) to bound the runtime on 2 cores.
  * one split per collection: 20 % of the images (seed 0) for validation; the same split for every
    row. Rows: the heads before training (random projection, same initialisation), trained without
    masking (mask-p 0), trained with attribute masking (mask-p 0.3, 4 variants + full caption).
  * heads: 2-layer MLP (hidden 512) into 256-d, InfoNCE with learnable temperature, AdamW lr 1e-3,
    batch 128, up to --epochs epochs, early stopping on val text->image recall@10 (patience 6).
  * metric: text->image recall@1/5/10 over the val images (each full caption queries them; a hit
    when its own image is in the top K), and image->text recall@10; difficulty index of the trained
    (masked) space per collection (formula in the README).
  * unseen collections: one workspace with the cryptopunks subsample + filthy_peasants + coco_mini;
    train on cryptopunks + coco_mini, evaluate on filthy_peasants, which training never saw.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from curata.ingest.pipeline import IngestOptions, ingest  # noqa: E402
from curata.ingest.table import ColumnMap  # noqa: E402
from curata.search.evaluate import evaluate_retrieval, format_table  # noqa: E402
from curata.search.joint import TEXT_CACHE, JointOptions, train_joint  # noqa: E402
from curata.workspace import Workspace  # noqa: E402

DATASETS = {  # name -> caption source
    "cryptopunks": "attributes",
    "filthy_peasants": "auto",
    "coco_mini": "auto",
}


def prepare(name: str, data: Path, cached: Path, work: Path) -> Workspace:
    """A private workspace for `name`: a copy of the cached one, else a fresh ingest."""
    target = work / name
    if (target / "collection.parquet").exists():
        return Workspace(target)
    source = cached / name
    if (source / "collection.parquet").exists():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("index", "reports"))
        return Workspace(target)
    if not (data / name).exists():
        raise SystemExit(f"{data / name} not found: pass --data or set CURATA_DATA (the shared data folder)")
    options = IngestOptions(columns=ColumnMap(tags="categories") if name == "coco_mini" else ColumnMap())
    ingest(data / name, Workspace(target), options)
    return Workspace(target)


def train_rows(ws: Workspace, name: str, captions: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    max_items = args.punks if name == "cryptopunks" else None
    for mask_p in (0.0, 0.3):
        options = JointOptions(captions=captions, mask_p=mask_p, epochs=args.epochs, max_items=max_items,
                               name=f"bench-mask{mask_p:g}", seed=0)
        started = time.perf_counter()
        summary = train_joint(ws, options)
        seconds = round(time.perf_counter() - started, 1)
        metrics = summary["metrics"]
        if mask_p == 0.0:
            rows.append({"dataset": name, "model": "untrained", **metrics["val_untrained"],
                         "val_items": summary["training"]["val"]})
        rows.append({"dataset": name, "model": f"trained, mask-p {mask_p:g}", **metrics["val"],
                     "val_items": summary["training"]["val"], "epochs": summary["training"]["epochs_run"],
                     "seconds": seconds, "train_t2i_r10": metrics["train"].get("t2i_r10")})
        print(f"  {name} mask-p {mask_p:g}: {summary['training']['epochs_run']} epochs, {seconds} s", flush=True)
    return rows


def combined(work: Path, parts: dict[str, Workspace], punks: int, epochs: int) -> dict[str, Any]:
    """Unseen collections: train on cryptopunks + coco_mini, evaluate on filthy_peasants."""
    target = work / "combined"
    ws = Workspace(target)
    if not ws.exists:
        for name, part in parts.items():
            items = part.items()
            if name == "cryptopunks" and len(items) > punks:
                items = items.sample(punks, random_state=0).sort_index()
            ws.add_items(items)
            # Feature stores and the caption cache are keyed by content hash: merging their parts is safe.
            for sub in ("features", f"cache/{TEXT_CACHE}"):
                for store in (part.root / sub).glob("*") if (part.root / sub).is_dir() else []:
                    dest = target / sub / store.name
                    dest.mkdir(parents=True, exist_ok=True)
                    for f in store.iterdir():
                        if not (dest / f.name).exists():
                            shutil.copy2(f, dest / f.name)
    collections = sorted(set(ws.items()["collection"]))
    held = [c for c in collections if c.lower().startswith("filthy")]
    options = JointOptions(captions="attributes", mask_p=0.3, epochs=epochs, holdout=tuple(held), name="unseen")
    summary = train_joint(ws, options)
    payload = evaluate_retrieval(ws, "unseen", write=False)
    return {"collections": collections, "holdout": held, "training": {k: v for k, v in summary["training"].items()
                                                                     if k != "history"},
            "evaluation": payload}


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = f"{'dataset':<16} {'model':<22} {'val':>5} {'t2i@1':>7} {'t2i@5':>7} {'t2i@10':>7} {'i2t@10':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['dataset']:<16} {r['model']:<22} {r['val_items']:>5} {r['t2i_r1']:>7.3f} {r['t2i_r5']:>7.3f} "
              f"{r['t2i_r10']:>7.3f} {r['i2t_r10']:>7.3f}")


def print_eval(payload: dict[str, Any]) -> None:
    for title, header, rows in format_table(payload):
        print(f"\n[{title}] " + " | ".join(header))
        for row in rows:
            print("  " + " | ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", ROOT.parent / "shared/data")))
    parser.add_argument("--cached", type=Path, default=ROOT / "benchmarks/workspaces",
                        help="cached workspaces to copy (read only)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/curata-bench-retrieval"),
                        help="where the private workspaces live (reruns reuse features and caption vectors)")
    parser.add_argument("--punks", type=int, default=2000, help="cryptopunks subsample size")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--only", default="cryptopunks,filthy_peasants,coco_mini,unseen")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/retrieval.json")
    args = parser.parse_args()
    if not args.data.exists():
        print(f"skipped: data folder {args.data} not found (pass --data or set CURATA_DATA)")
        return
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    print(__doc__.split("Protocol (printed with the results):")[1].strip(), "\n", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    evaluations: dict[str, Any] = {}
    parts: dict[str, Workspace] = {}
    for name, captions in DATASETS.items():
        if name not in wanted and "unseen" not in wanted:
            continue
        parts[name] = prepare(name, args.data, args.cached, args.work)
        if name not in wanted:
            continue
        rows += train_rows(parts[name], name, captions, args)
        evaluations[name] = evaluate_retrieval(parts[name], "bench-mask0.3", write=False)
    unseen = combined(args.work, parts, args.punks, args.epochs) if "unseen" in wanted else None
    print()
    print_rows(rows)
    for name, payload in evaluations.items():
        print(f"\n== {name}: trained with masking, per-collection recall and difficulty")
        print_eval(payload)
    if unseen:
        seen = ", ".join(c for c in unseen["collections"] if c not in unseen["holdout"])
        print(f"\n== unseen collections: trained on {seen}; evaluated on {', '.join(unseen['holdout'])} "
              "(never seen) and on val items of the others")
        print_eval(unseen["evaluation"])
    result = {"protocol": __doc__, "rows": rows, "evaluations": evaluations, "unseen": unseen,
              "seconds": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"\nwrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
