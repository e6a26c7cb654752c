"""Hybrid text search (traits + BM25 + joint space, fused) against the joint space alone, on the
workspaces and joint spaces `benchmarks/retrieval.py` leaves behind.

    python benchmarks/hybrid.py [--work /tmp/curata-bench-retrieval] [--model bench-default]
                                [--only cryptopunks,filthy_peasants,demo,loco] [--queries 300]
                                [--out benchmarks/results/hybrid.json]

Protocol (printed with the results):
  * run `benchmarks/retrieval.py` first: it builds the workspaces under --work and trains in each the
    joint space chosen by validation (`bench-default`); in `combined` that space was trained with
    filthy_peasants held out entirely (leave-one-collection-out).
  * per workspace: `build_index` with that space (vectors + the lexical index of captions and tags),
    then the same queries ranked two ways over the same gallery (every item of the workspace):
    `joint` (the space alone) and `hybrid` (the default of `curata search`: trait matches first, then
    reciprocal-rank fusion of BM25 and the joint space).
  * partial queries: `partial_queries` over every item (1, 2 and 3 attributes, NFT1000 template,
    seed 0, at most --queries per size), scored "any token with those attributes" (any) and "this
    token" (this) at R@1/5/10.
  * leave-one-collection-out (`loco`): full captions of the held-out collection's tokens, ranked within
    that collection (a collection filter), hit = the token itself (or an identical image) in the top K.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from curata.search.captions import PartialQuery, item_captions, partial_queries  # noqa: E402
from curata.search.evaluate import partial_recall  # noqa: E402
from curata.search.hybrid import ranker  # noqa: E402
from curata.search.searcher import Searcher, build_index  # noqa: E402
from curata.workspace import Workspace  # noqa: E402

CAPTIONS = {"cryptopunks": "attributes", "filthy_peasants": "auto", "demo": "auto", "combined": "attributes"}
MODES = ("joint", "hybrid")
KS = (1, 5, 10)


def identical_groups(items: Any) -> np.ndarray:
    """One id per distinct image (identical images count as the same token)."""
    return items["image_sha256"].astype(str).to_numpy()


def partial_rows(ws: Workspace, model: str, source: str, per_size: int) -> dict[str, Any]:
    items = ws.items()
    searcher = Searcher.open(ws, model=model)
    queries = partial_queries(item_captions(items, source), max_per_size=per_size, seed=0)
    ids = items["id"].astype(str).tolist()
    out = {}
    for mode in MODES:
        t = time.perf_counter()
        out[mode] = partial_recall(queries, ranker(searcher, mode, max(KS)), identical_groups(items), KS, ids=ids)
        out[mode]["seconds"] = round(time.perf_counter() - t, 2)
    return out


def loco_rows(ws: Workspace, model: str, held: str) -> dict[str, Any]:
    """Full captions of the held-out collection, ranked within it."""
    items = ws.items().reset_index(drop=True)
    rows = np.flatnonzero(items["collection"].to_numpy() == held)
    caps = item_captions(items.iloc[rows], "attributes")
    groups = identical_groups(items.iloc[rows])
    queries = [PartialQuery(c.captions[0], n, len(c.attributes), np.flatnonzero(groups == groups[n]))
               for n, c in enumerate(caps) if c.captions]
    searcher = Searcher.open(ws, model=model)
    ids = items["id"].iloc[rows].astype(str).tolist()
    out = {}
    for mode in MODES:
        def rank(texts: list[str], mode: str = mode) -> list[list[str]]:
            return searcher.rank_texts(texts, mode=mode, k=max(KS), filters={"collection": held})

        out[mode] = partial_recall(queries, rank, groups, KS, ids=ids)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/curata-bench-retrieval"))
    parser.add_argument("--model", default="bench-default")
    parser.add_argument("--only", default="cryptopunks,filthy_peasants,demo,loco")
    parser.add_argument("--queries", type=int, default=300, help="partial queries per size (1, 2, 3 attributes)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/hybrid.json")
    args = parser.parse_args()
    print(__doc__.split("Protocol (printed with the results):")[1].strip(), "\n", flush=True)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    results: dict[str, Any] = {}
    for name in wanted:
        folder = args.work / ("combined" if name == "loco" else name)
        if not (folder / "models" / args.model / "card.json").exists():
            print(f"skipped {name}: no {args.model} joint space in {folder} (run benchmarks/retrieval.py first)")
            continue
        ws = Workspace(folder)
        t = time.perf_counter()
        built = build_index(ws, args.model)
        print(f"{name}: index of {built['total']} items in {time.perf_counter() - t:.1f} s", flush=True)
        if name == "loco":
            card = json.loads((folder / "models" / args.model / "card.json").read_text())
            held = (card.get("training", {}).get("holdout_collections") or [None])[0]
            if held is None:
                print("skipped loco: the space in combined/ was not trained with a held-out collection")
                continue
            results["loco"] = {"held_out": held, **loco_rows(ws, args.model, held)}
        else:
            results[name] = partial_rows(ws, args.model, CAPTIONS[name], args.queries)

    print(f"\n{'workspace':<16} {'queries':<10} {'mode':<7} {'n':>5} " + " ".join(
        f"{w}@{k:<2}" for w in ("any", "this") for k in KS))
    for name, res in results.items():
        sizes = ["all"] if name == "loco" else ["1", "2", "3", "all"]
        for size in sizes:
            for mode in MODES:
                r = res[mode].get(size)
                if not r:
                    continue
                label = "full (loco)" if name == "loco" else f"{size}-attr" if size != "all" else "partial all"
                cells = " ".join(f"{r.get(f'{w}_r{k}', float('nan')):>6.3f}" for w in ("any", "this") for k in KS)
                print(f"{name:<16} {label:<10} {mode:<7} {r['queries']:>5} {cells}")
    gains = {n: round(res["hybrid"]["all"]["any_r10"] - res["joint"]["all"]["any_r10"], 3)
             for n, res in results.items() if n != "loco" and "all" in res["hybrid"]}
    print(f"\nhybrid minus joint, partial queries, any-token R@10: {gains}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"protocol": __doc__, "results": results, "gain_any_r10": gains}, indent=2,
                                   default=float))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
