"""Keywords against held-out tags, and suspicious-label detection against labels we corrupt ourselves.

    python benchmarks/describe.py [--data ../shared/data] [--workspaces benchmarks/workspaces]
                                  [--only demo,filthy_peasants,cryptopunks,flipkart,coco_mini] [--noise 0.05]

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
  * content words: on coco_mini (159 COCO photos; `categories` ingested as tags, effnet_lite0 features and
    their views, effnet_lite0_views), `curata.describe.evaluate_content_words` — 5-fold (seed 0), every
    photo held out once; its content words (ImageNet head of effnet_lite0, pooled over the whole image and
    its corner crops, as describe reads them when a workspace has the views; the whole image alone is
    reported beside; popularity prior from the other folds) become COCO categories
    through the WordNet mapping of `curata.describe.vocabulary` and are ranked by probability mass;
    precision@5, recall@5 and hit@5 against its COCO categories, next to the popularity baseline (the
    5 most frequent categories of the other folds for every photo), the prior variants, the neighbours'
    votes and the two fused by reciprocal rank. The precision ceiling (mean min(#categories, 5) / 5) is
    printed: most photos have fewer than 5 categories.
  * words everywhere: on flipkart (7 product categories, content words on), with each prior, the share of
    items whose 3 best content words include a word that is among the 3 best of items in at least half
    the categories (what the ImageNet head says of anything), and the share left with no word.
Workspaces are prepared like benchmarks/accuracy.py (same folder, reused between runs); accuracy.py has
no coco_mini suite, so `prepare_coco` does the same steps (ingest labels.csv, compute effnet_lite0).
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
from curata.describe.content import CONTENT_EMBEDDING, CONTENT_VIEWS, PRIORS, ContentWords, features_to_logits
from curata.describe.evaluate import evaluate_content_words
from curata.features.engine import compute, load_matrix, make_extractor
from curata.ingest.pipeline import IngestOptions, ingest
from curata.ingest.table import ColumnMap
from curata.progress import rich_reporter
from curata.quality import suspicious_labels
from curata.tasks.data import load_features
from curata.workspace import Workspace

SUITES = ("demo", "filthy_peasants", "cryptopunks", "flipkart", "coco_mini")


def prepare_coco(data: Path, root: Path):
    """coco_mini as a workspace: labels.csv ingested with its `categories` as tags, effnet_lite0 and its views
    (`effnet_lite0_views`, what the content words read when a workspace has them) computed."""
    source = data / "coco_mini"
    if not source.is_dir():
        print(f"skipped coco_mini: {source} not found")
        return None
    ws = Workspace(root / "coco_mini")
    with rich_reporter() as reporter:
        ingest(source, ws, IngestOptions(columns=ColumnMap(tags="categories")), reporter)
        compute(make_extractor(CONTENT_EMBEDDING), ws, reporter=reporter)
        compute(make_extractor(CONTENT_VIEWS), ws, reporter=reporter)
    return ws


def content_rows(ws) -> tuple[list[dict], dict]:
    result = evaluate_content_words(ws, k=5, folds=5, seed=0)
    rows = [{"suite": "coco_mini", "source": source, **scores, "items": result["protocol"]["items"],
             "seconds": result["seconds"]} for source, scores in result["sources"].items()]
    return rows, result["protocol"]


def ubiquity_rows(name: str, ws) -> list[dict]:
    """Per prior: the share of items whose 3 best content words include an "everywhere" word (one that is
    among the 3 best of items of at least half the collection's labels: what the head says of anything),
    the share of items left with no content word, and how many distinct words are used."""
    items = ws.items()
    matrix, errors = load_matrix(ws, make_extractor(CONTENT_EMBEDDING), items)
    ok = np.array([e is None for e in errors], bool)
    logits, labels = features_to_logits(matrix[ok]), items["label"].astype(str).to_numpy()[ok]
    rows = []
    for mode in PRIORS:
        words = [[k.keyword for k in kws] for kws in ContentWords.fit(logits, mode=mode).keywords(logits, top=3)]
        seen: dict[str, set[str]] = {}
        for ws_words, label in zip(words, labels, strict=True):
            for w in ws_words:
                seen.setdefault(w, set()).add(label)
        everywhere = {w for w, where in seen.items() if len(where) >= len(set(labels)) / 2}
        rows.append({"suite": name, "prior": mode, "labels": len(set(labels)),
                     "items with an everywhere word": round(float(np.mean([bool(everywhere & set(w))
                                                                           for w in words])), 3),
                     "everywhere words": sorted(everywhere, key=lambda w: -len(seen[w]))[:6],
                     "items with no word": round(float(np.mean([not w for w in words])), 3),
                     "distinct words": len(seen), "items": len(words)})
    return rows


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
    keywords, noise, content, ubiquity, coco_protocol = [], None, [], [], None
    for name in args.only.split(",") if args.only else SUITES:
        ws = prepare_coco(args.data, args.workspaces) if name == "coco_mini" else prepare(name, args.data,
                                                                                          args.workspaces)
        if ws is None:
            continue
        if name == "coco_mini":
            content, coco_protocol = content_rows(ws)
        elif name == "flipkart":
            noise = label_noise_row(ws, args.noise)
            ubiquity += ubiquity_rows(name, ws)  # 7 product categories: words said of all are noise
        else:
            keywords += keyword_rows(name, ws, args.max_items)
    print(f"{'suite':<16} {'source':<20} {'P@5':>6} {'R@5':>6} {'items':>6} {'s':>6}")
    for r in keywords:
        print(f"{r['suite']:<16} {r['source']:<20} {r['precision@5']:>6.3f} {r['recall@5']:>6.3f} "
              f"{r['items']:>6} {r['seconds']:>6.1f}")
    if content:
        print(f"\ncontent words on coco_mini against COCO categories: {json.dumps(coco_protocol)}")
        print(f"{'suite':<10} {'source':<30} {'P@5':>6} {'R@5':>6} {'hit@5':>6} {'items':>6} {'s':>6}")
        for r in content:
            print(f"{r['suite']:<10} {r['source']:<30} {r['precision@5']:>6.3f} {r['recall@5']:>6.3f} "
                  f"{r['hit@5']:>6.3f} {r['items']:>6} {r['seconds']:>6.1f}")
    if ubiquity:
        print(f"\n{'suite':<10} {'prior':<9} {'everywhere':>10} {'no word':>8} {'distinct':>8} {'items':>6}  "
              "everywhere words")
        for r in ubiquity:
            print(f"{r['suite']:<10} {r['prior']:<9} {r['items with an everywhere word']:>10.3f} "
                  f"{r['items with no word']:>8.3f} {r['distinct words']:>8} {r['items']:>6}  "
                  + ", ".join(r["everywhere words"]))
    if noise:
        print("suspicious labels on flipkart with flipped labels: " + json.dumps(noise))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"keywords": keywords, "suspicious_labels": noise,
                                    "content_words": {"protocol": coco_protocol, "rows": content},
                                    "words_everywhere": ubiquity}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
