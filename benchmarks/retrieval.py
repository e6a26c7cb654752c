"""Cross-modal retrieval (NFT1000 protocol) with the joint space curata learns on frozen encoders:
the settings `curata joint train` chooses by validation against every alternative it tried.

    python benchmarks/retrieval.py [--data ../shared/data] [--work /tmp/curata-bench-retrieval]
                                   [--punks 2000] [--demo 30] [--epochs 40] [--budget 120]
                                   [--only cryptopunks,filthy_peasants,coco_mini,demo,combined,loco]
                                   [--out benchmarks/results/retrieval.json]

Protocol (printed with the results):
  * data from --data / CURATA_DATA: `cryptopunks` (a seeded --punks subsample; captions from the
    traits: type as the label, skin and accessories as tags, `--captions attributes`),
    `filthy_peasants` (NFT1000 captions from the ERC-721 token attributes), `coco_mini` (5 human
    captions per photo, 159 photos: a smoke check) and `demo` (the built-in generator, --demo tokens
    per algorithm at 128 px, NFT attributes). Each is ingested into a private workspace under --work
    (reruns reuse its features and caption vectors).
  * one split per collection: 20 % of the images (seed 0) for validation, the same for every row.
  * "default": `joint train` with nothing given: image features (effnet_lite0, plus pixels_onehot
    and effnet_lite0+pixels_onehot when the images are pixel art), head (linear / MLP 512), masking
    (p 0 / 0.3) and batching (random / in-collection) chosen by val recall on full + partial
    queries, candidates trained --select-epochs within --budget seconds, the winner retrained for
    --epochs. Every other candidate selection tried is then trained the same way (--epochs) and evaluated alike.
  * metrics on the val items: text->image recall@1/5/10 of the full captions, pooled (gallery =
    every val item) and within each collection (mean over collections); partial queries naming 1, 2,
    3 attributes of a token (NFT1000 template, seeded), "any" (any token holding them is a hit) and
    "this" (only the token itself).
  * combined: one workspace with all four collections (pooled vs within-collection recall differ
    there). loco: the general space of that workspace (`joint train --general`: every collection
    plus --pretrain-demo demo drawings rendered in memory) with filthy_peasants left out entirely
    (selection on the others' val split), queried on filthy_peasants (leave-one-collection-out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
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
    "demo": "auto",
}
SELECT = ("features", "head", "masking", "batching")


def prepare(name: str, data: Path, work: Path, punks: int, demo: int) -> Workspace:
    """A private workspace for `name`, ingested once (reruns reuse it with its features)."""
    target = work / name
    if Workspace(target).exists:
        return Workspace(target)
    if name == "demo":
        from curata.demo.generate import generate_collection

        generate_collection(work / "demo-src", per_algorithm=demo, size=128, seed=0, workers=1)
        ingest(work / "demo-src", Workspace(target), IngestOptions(format="nft", source_name="demo",
                                                                   collection="curata demo"))
        return Workspace(target)
    if not (data / name).exists():
        raise SystemExit(f"{data / name} not found: pass --data or set CURATA_DATA (the shared data folder)")
    if name == "cryptopunks":  # a seeded subsample; traits as tags (skin=..., accessories), type as the label
        import pandas as pd

        table = pd.read_csv(data / name / "labels.csv")
        table = table.sample(min(punks, len(table)), random_state=0).sort_index()
        table["path"] = [str(data / name / p) for p in table["path"]]
        table["tags"] = ["skin=" + str(skin) + "".join(f";{a}" for a in str(acc).split(";") if a and acc == acc)
                         for skin, acc in zip(table["skin"], table["accessories"], strict=True)]
        subset = work / "cryptopunks-subset.csv"
        work.mkdir(parents=True, exist_ok=True)
        table.drop(columns=["accessories"]).to_csv(subset, index=False)
        ingest(subset, Workspace(target), IngestOptions(source_name="cryptopunks", collection="cryptopunks",
                                                         columns=ColumnMap(tags="tags", label="label")))
        return Workspace(target)
    options = IngestOptions(columns=ColumnMap(tags="categories") if name == "coco_mini" else ColumnMap())
    ingest(data / name, Workspace(target), options)
    return Workspace(target)


def describe(config: dict[str, Any]) -> str:
    head = "linear" if not config["hidden"] else f"mlp{config['hidden']}"
    short = {"effnet_lite0": "effnet", "pixels_onehot": "onehot", "effnet_lite0+pixels_onehot": "effnet+onehot"}
    feats = short.get(config["image_features"], config["image_features"])
    return f"{feats} {head} m{config['mask_p']:g} {config['batching'][:4]}"


def measure(ws: Workspace, model: str, subset: str = "val") -> dict[str, Any]:
    """Full-caption recall pooled and within collections, partial-query recall, from `curata joint evaluate`."""
    res = evaluate_retrieval(ws, model, subset=subset, write=False)["sets"][subset]
    colls = res["collections"]
    within = {f"r{k}": round(sum(c[f"t2i_r{k}"] for c in colls.values()) / len(colls), 4) for k in (1, 5, 10)}
    pooled = {f"r{k}": res["pooled"][f"t2i_r{k}"] for k in (1, 5, 10)}
    return {"items": res["pooled"]["items"], "pooled": pooled, "within": within,
            "partial": res.get("partial", {}).get("pooled", {}),
            "partial_within": res.get("partial", {}).get("collections", {})}


def train_rows(ws: Workspace, name: str, captions: str, args: argparse.Namespace,
               holdout: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The default (selected) settings, then every other candidate selection tried, trained alike."""
    base = JointOptions(captions=captions, epochs=args.epochs, select=SELECT, budget_s=args.budget,
                        select_epochs=args.select_epochs, holdout=holdout, name="bench-default", seed=0,
                        pretrain_demo=args.pretrain_demo if holdout else 0)
    started = time.perf_counter()
    summary = train_joint(ws, base)
    seconds = round(time.perf_counter() - started, 1)
    selection = summary["selection"]
    subset = "holdout" if holdout else "val"
    rows = [{"dataset": name, "setting": "default: " + describe(selection["chosen"]), "default": True,
             "config": selection["chosen"], "seconds": seconds, "selection_seconds": selection["seconds"],
             **measure(ws, "bench-default", subset)}]
    print(f"  {name} default {describe(selection['chosen'])}: {seconds} s (selection {selection['seconds']} s)",
          flush=True)
    if holdout:
        return rows, selection
    for i, cand in enumerate(c for c in selection["candidates"] if "score" in c and not c["chosen"]):
        options = replace(base, select=(), name=f"bench-alt{i}", **cand["config"])
        started = time.perf_counter()
        train_joint(ws, options)
        seconds = round(time.perf_counter() - started, 1)
        rows.append({"dataset": name, "setting": describe(cand["config"]), "default": False,
                     "config": cand["config"], "seconds": seconds, **measure(ws, options.name)})
        print(f"  {name} {describe(cand['config'])}: {seconds} s", flush=True)
    return rows, selection


def combined(work: Path, parts: dict[str, Workspace]) -> Workspace:
    """One workspace holding every collection (features and caption vectors merged: keyed by content hash)."""
    target = work / "combined"
    ws = Workspace(target)
    if not ws.exists:
        for part in parts.values():
            ws.add_items(part.items())
            for sub in ("features", f"cache/{TEXT_CACHE}"):
                for store in (part.root / sub).glob("*") if (part.root / sub).is_dir() else []:
                    dest = target / sub / store.name
                    dest.mkdir(parents=True, exist_ok=True)
                    for f in store.iterdir():
                        if f.is_file() and not (dest / f.name).exists():
                            shutil.copy2(f, dest / f.name)
    return ws


def score(row: dict[str, Any]) -> float:
    """The selection score (curata.search.joint.selection_score) of a row: mean of full-caption R@1, R@10
    and, where there are attributes, partial-query any-token R@1, R@10."""
    p = row["partial"].get("all")
    parts = [row["pooled"]["r1"], row["pooled"]["r10"], *([p["any_r1"], p["any_r10"]] if p else [])]
    return sum(parts) / len(parts)


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = (f"{'dataset':<16} {'setting':<30} {'val':>5} {'t2i@1':>6} {'@5':>6} {'@10':>6} {'in@1':>6} {'in@10':>6} "
              f"{'p1any@1':>7} {'p1this':>6} {'p2any@1':>7} {'p2this':>6} {'p3any@1':>7} {'p3this':>6} "
              f"{'pany@10':>7} {'s':>6}")
    print(header)
    print("-" * len(header))
    for r in rows:
        p = r["partial"]

        def cell(size: str, key: str, width: int, p: dict = p) -> str:
            return f"{p[size][key]:>{width}.3f}" if size in p else f"{'-':>{width}}"

        print(f"{r['dataset']:<16} {r['setting']:<30} {r['items']:>5} {r['pooled']['r1']:>6.3f} "
              f"{r['pooled']['r5']:>6.3f} {r['pooled']['r10']:>6.3f} {r['within']['r1']:>6.3f} "
              f"{r['within']['r10']:>6.3f} {cell('1', 'any_r1', 7)} {cell('1', 'this_r1', 6)} "
              f"{cell('2', 'any_r1', 7)} {cell('2', 'this_r1', 6)} {cell('3', 'any_r1', 7)} "
              f"{cell('3', 'this_r1', 6)} {cell('all', 'any_r10', 7)} {r['seconds']:>6}")


def print_eval(payload: dict[str, Any]) -> None:
    for title, header, rows in format_table(payload):
        print(f"\n[{title}] " + " | ".join(header))
        for row in rows:
            print("  " + " | ".join(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", ROOT.parent / "shared/data")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/curata-bench-retrieval"),
                        help="where the private workspaces live (reruns reuse features and caption vectors)")
    parser.add_argument("--punks", type=int, default=2000, help="cryptopunks subsample size")
    parser.add_argument("--demo", type=int, default=30, help="demo tokens per algorithm")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--select-epochs", type=int, default=15)
    parser.add_argument("--budget", type=float, default=120.0, help="selection time budget per training (s)")
    parser.add_argument("--pretrain-demo", type=int, default=1000,
                        help="demo drawings added to the training of the leave-one-collection-out (general) space")
    parser.add_argument("--only", default="cryptopunks,filthy_peasants,coco_mini,demo,combined,loco")
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
    selections: dict[str, Any] = {}
    parts: dict[str, Workspace] = {}
    needs_all = "combined" in wanted or "loco" in wanted
    for name, captions in DATASETS.items():
        if name not in wanted and not needs_all:
            continue
        parts[name] = prepare(name, args.data, args.work, args.punks, args.demo)
        if name in wanted:
            new, selections[name] = train_rows(parts[name], name, captions, args)
            rows += new
    if needs_all:
        ws = combined(args.work, parts)
        if "combined" in wanted:
            new, selections["combined"] = train_rows(ws, "combined", "attributes", args)
            rows += new
        if "loco" in wanted:
            held = tuple(c for c in sorted(set(ws.items()["collection"])) if c.lower().startswith("filthy"))
            new, selections["loco"] = train_rows(ws, "loco-peasants", "attributes", args, held)
            rows += new
    print()
    print_rows(rows)
    best = {}
    for r in rows:
        best[r["dataset"]] = max(best.get(r["dataset"], 0.0), r["pooled"]["r1"])
    gaps = {r["dataset"]: round(best[r["dataset"]] - r["pooled"]["r1"], 4) for r in rows if r["default"]}
    print(f"\ndefault's gap to the best setting tried (pooled full-caption R@1): {gaps}")
    best_score: dict[str, float] = {}
    for r in rows:
        best_score[r["dataset"]] = max(best_score.get(r["dataset"], 0.0), score(r))
    score_gaps = {r["dataset"]: round(best_score[r["dataset"]] - score(r), 4) for r in rows if r["default"]}
    print(f"default's gap to the best setting tried (selection score: full + partial R@1, R@10): {score_gaps}")
    result = {"protocol": __doc__, "rows": rows, "selections": selections, "default_gap_r1": gaps,
              "default_gap_score": score_gaps,
              "seconds": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str), encoding="utf-8")
    print(f"\nwrote {args.out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
