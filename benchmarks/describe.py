"""Keywords against held-out tags, and suspicious-label detection against labels we corrupt ourselves.

    python benchmarks/describe.py [--data ../shared/data] [--workspaces benchmarks/workspaces]
                                  [--only demo,filthy_peasants,cryptopunks,flipkart] [--noise 0.05]

Protocol (printed with the results):
  * keywords: `curata.describe.evaluate_keywords` — items with tags split 80/20 at random (seed 0); the
    sources see only the 80 % (neighbours among them, a one-vs-rest logistic regression tag model
    fitted on them, effnet_lite0 features); each held-out item's top-5 tag keywords are compared with
    its true tags (tags whose value is "none" excluded on both sides): precision@5 and recall@5 per
    source, next to a popularity baseline (the 5 most frequent tags for everyone). cryptopunks is
    subsampled to --max-items items (default 3000) to bound the time.
  * suspicious labels: on flipkart (7 categories, labels believed clean) a fraction --noise of the
    labels is flipped to another category at random (seed 0); `suspicious_labels` (5-fold out-of-fold
    logistic regression on effnet_lite0 + minilm, confident-learning thresholds) ranks items. Reported:
    precision and recall of the flagged set against the flipped items, and precision of the top-N
    (N = items flipped); a random ranking would have precision = --noise.
Workspaces are prepared like benchmarks/accuracy.py (same folder, reused between runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from accuracy import prepare  # the same workspace preparation as the accuracy benchmark
from curata.describe import evaluate_keywords
from curata.quality import suspicious_labels
from curata.tasks.data import load_features

SUITES = ("demo", "filthy_peasants", "cryptopunks", "flipkart")


def keyword_rows(name: str, ws, max_items: int) -> list[dict]:
    result = evaluate_keywords(ws, k=5, seed=0, max_items=max_items if name == "cryptopunks" else None)
    return [{"suite": name, "source": source, **scores, "items": result["protocol"]["items"],
             "seconds": result["seconds"]} for source, scores in result["sources"].items()]


def label_noise_row(ws, noise: float, seed: int = 0) -> dict:
    items = ws.items()
    feature_set, keep = load_features(ws, ["effnet_lite0", "minilm"], items)
    items = items[keep]
    labels = items["label"].astype(str).to_numpy().copy()
    classes = sorted(set(labels))
    rng = np.random.default_rng(seed)
    flipped = rng.choice(len(labels), round(noise * len(labels)), replace=False)
    for i in flipped:
        labels[i] = rng.choice([c for c in classes if c != labels[i]])
    ids = items["id"].tolist()
    x = np.hstack([feature_set.blocks[k] / np.linalg.norm(feature_set.blocks[k], axis=1, keepdims=True)
                   for k in sorted(feature_set.blocks)])
    t = time.perf_counter()
    result = suspicious_labels(ids, x, labels, seed=seed)
    seconds = time.perf_counter() - t
    truth = {ids[i] for i in flipped}
    flagged = [r["id"] for r in result["suspicious"]]
    hits = len(truth & set(flagged))
    top_n = len(truth & set(flagged[:len(truth)]))
    return {"suite": "flipkart", "items": len(ids), "flipped": len(truth), "flagged": len(flagged),
            "precision": round(hits / max(len(flagged), 1), 3), "recall": round(hits / len(truth), 3),
            f"precision@{len(truth)}": round(top_n / len(truth), 3), "random_precision": noise,
            "seconds": round(seconds, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", "../shared/data")))
    parser.add_argument("--workspaces", type=Path, default=Path("benchmarks/workspaces"))
    parser.add_argument("--only", help="comma-separated suites: " + ",".join(SUITES))
    parser.add_argument("--max-items", type=int, default=3000, help="cryptopunks subsample for keywords")
    parser.add_argument("--noise", type=float, default=0.05, help="fraction of flipkart labels flipped")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/describe.json"))
    args = parser.parse_args()
    print(__doc__.split("Protocol", 1)[1])
    keywords, noise = [], None
    for name in args.only.split(",") if args.only else SUITES:
        ws = prepare(name, args.data, args.workspaces)
        if ws is None:
            continue
        if name == "flipkart":
            noise = label_noise_row(ws, args.noise)
        else:
            keywords += keyword_rows(name, ws, args.max_items)
    print(f"{'suite':<16} {'source':<20} {'P@5':>6} {'R@5':>6} {'items':>6} {'s':>6}")
    for r in keywords:
        print(f"{r['suite']:<16} {r['source']:<20} {r['precision@5']:>6.3f} {r['recall@5']:>6.3f} "
              f"{r['items']:>6} {r['seconds']:>6.1f}")
    if noise:
        print("suspicious labels on flipkart with flipped labels: " + json.dumps(noise))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"keywords": keywords, "suspicious_labels": noise}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
