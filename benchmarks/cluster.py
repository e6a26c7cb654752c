"""Unsupervised clustering quality on Flipkart products (7 categories), against the published study.

    python benchmarks/cluster.py [--data ../shared/data] [--workspace /tmp/curata-bench-flipkart]
                                 [--seeds 5] [--extra] [--out benchmarks/results/cluster.json]

Protocol (printed with the results):
  * data: `flipkart` from --data / CURATA_DATA (1047 products, 7 top-level categories as `label`).
  * the workspace is prepared with the product's own commands: `curata ingest <data>/flipkart -w WS`
    then `curata features -w WS -e minilm,tfidf,effnet_lite0` (reusing WS makes reruns instant).
  * every protocol row: k-means with k = 7 (10 k-means++ starts) via `curata.cluster.cluster()`, on rows
    L2-normalised ("center": mean removed first), after the named reduction; fusion is early fusion
    (each block L2-normalised, side by side). Mean ± std over seeds 0..N-1 (the seed drives the
    reduction and k-means). ARI and NMI against `label`; silhouette in the input space (cosine
    geometry), i.e. the same space for every reduction of one representation.
  * targets: ARI >= 0.70 text, >= 0.55 image, >= 0.75 fused (best k-means row of each group). Rows
    after the protocol ones try other algorithms (Ward agglomerative, spectral, GMM; k = 7 too).
  * study being compared with: k-means ARI 0.53 (sentence-BERT) to 0.70 (USE + t-SNE) on text,
    0.47 (VGG16) to 0.54 (MobileNet) on CNN image features.
Also timed: perceptual-hash near-duplicate groups over the collection's images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

K = 7
TARGETS = {"text": 0.70, "image": 0.55, "fused": 0.75}
STUDY = {"text": "0.53-0.70", "image": "0.47-0.54", "fused": "-"}

# (group, label, feature blocks, normalisation, pre-step, reduction, components, algorithm)
# pre-step "svd": tf-idf -> truncated SVD (100-d, re-normalised): latent semantic analysis.
Row = tuple[str, str, tuple[str, ...], str, str | None, str, int | None, str]
MINILM, TFIDF, EFFNET, LOGITS = ("minilm",), ("tfidf",), ("effnet_lite0",), ("effnet_lite0_logits",)
FUSED = ("minilm", "effnet_lite0")
ROWS: list[Row] = [
    ("text", "MiniLM", MINILM, "l2", None, "none", None, "kmeans"),
    ("text", "MiniLM", MINILM, "l2", None, "pca", 50, "kmeans"),
    ("text", "MiniLM", MINILM, "l2", None, "tsne", 2, "kmeans"),
    ("text", "MiniLM", MINILM, "l2", None, "umap", 10, "kmeans"),
    ("text", "tf-idf+SVD", TFIDF, "l2", "svd", "none", None, "kmeans"),
    ("text", "tf-idf+SVD", TFIDF, "l2", "svd", "tsne", 2, "kmeans"),
    ("text", "tf-idf+SVD", TFIDF, "l2", "svd", "umap", 10, "kmeans"),
    ("image", "EffNet-Lite0", EFFNET, "l2", None, "none", None, "kmeans"),
    ("image", "EffNet-Lite0", EFFNET, "l2", None, "pca", 50, "kmeans"),
    ("image", "EffNet-Lite0", EFFNET, "l2", None, "pca-whiten", 50, "kmeans"),
    ("image", "EffNet-Lite0", EFFNET, "l2", None, "tsne", 2, "kmeans"),
    ("image", "EffNet-Lite0", EFFNET, "l2", None, "umap", 10, "kmeans"),
    ("image", "EffNet-Lite0", EFFNET, "center", None, "umap", 10, "kmeans"),
    ("fused", "MiniLM+EffNet-Lite0", FUSED, "l2", None, "none", None, "kmeans"),
    ("fused", "MiniLM+EffNet-Lite0", FUSED, "l2", None, "pca", 50, "kmeans"),
    ("fused", "MiniLM+EffNet-Lite0", FUSED, "l2", None, "tsne", 2, "kmeans"),
    ("fused", "MiniLM+EffNet-Lite0", FUSED, "l2", None, "umap", 10, "kmeans"),
    ("fused", "MiniLM+tf-idf+EffNet-Lite0", ("minilm", "tfidf", "effnet_lite0"), "l2", None, "umap", 10, "kmeans"),
    # Power normalisation (signed sqrt, then L2) and the ImageNet logits instead of pooled features.
    ("image", "EffNet-Lite0", EFFNET, "sqrt", None, "umap", 10, "kmeans"),
    ("image", "EffNet-Lite0 logits", LOGITS, "l2", None, "umap", 10, "kmeans"),
    ("fused", "MiniLM+EffNet-Lite0", FUSED, "sqrt", None, "umap", 10, "kmeans"),
    ("fused", "MiniLM+EffNet-Lite0 logits", ("minilm", "effnet_lite0_logits"), "l2", None, "umap", 10, "kmeans"),
    # Beyond the protocol: other algorithms on the best spaces (k = 7 too).
    ("text", "MiniLM", MINILM, "l2", None, "umap", 10, "agglomerative"),
    ("image", "EffNet-Lite0", EFFNET, "l2", None, "none", None, "spectral"),
    ("image", "EffNet-Lite0", EFFNET, "center", None, "umap", 10, "agglomerative"),
    ("fused", "MiniLM+EffNet-Lite0", FUSED, "l2", None, "umap", 10, "agglomerative"),
    ("fused", "MiniLM+EffNet-Lite0", FUSED, "l2", None, "umap", 10, "gmm"),
]
EXTRA_ROWS: list[Row] = [
    ("image", "EffNet-Lite2 (extra)", ("effnet_lite2",), "l2", None, "none", None, "kmeans"),
    ("image", "EffNet-Lite2 (extra)", ("effnet_lite2",), "l2", None, "umap", 10, "kmeans"),
    ("fused", "MiniLM+EffNet-Lite2 (extra)", ("minilm", "effnet_lite2"), "l2", None, "umap", 10, "kmeans"),
]


def curata(*args: str) -> None:
    """Run a curata CLI command in this interpreter's environment."""
    cmd = [sys.executable, "-m", "curata.cli", *args]
    print("$ curata " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def prepare(data: Path, workspace: Path, extractors: list[str]) -> None:
    from curata.workspace import Workspace

    if not Workspace(workspace).exists:
        curata("ingest", str(data / "flipkart"), "-w", str(workspace), "-q")
    curata("features", "-w", str(workspace), "-e", ",".join(extractors), "-q")


def run_rows(workspace: Path, rows: list, seeds: int) -> list[dict[str, Any]]:
    from curata.cluster import cluster
    from curata.cluster.core import normalise, reduce
    from curata.tasks.data import FeatureSet, load_features, single_target
    from curata.workspace import Workspace

    ws = Workspace(workspace)
    items = ws.items()
    names = sorted({b for row in rows for b in row[2]})
    fs, keep = load_features(ws, names, items)
    truth = list(single_target(items[keep], "label"))
    print(f"{int(keep.sum())} of {len(items)} items have every feature; {len(set(truth))} labels", flush=True)
    results = []
    for group, label, blocks, normalisation, pre, reduction, dims, method in rows:
        aris, nmis, sils, secs = [], [], [], []
        for seed in range(seeds):
            started = time.perf_counter()
            x = FeatureSet({b: fs.blocks[b] for b in blocks}, {}).concat(normalise=True)
            if pre == "svd":
                x = reduce(normalise(x), "svd", 100, seed)
            r = cluster(x, method, K, normalisation=normalisation, reduction=reduction, n_components=dims,
                        truth=truth, seed=seed)
            secs.append(time.perf_counter() - started)
            aris.append(r.scores["ari"])
            nmis.append(r.scores["nmi"])
            sils.append(r.scores["silhouette"])
        row = {"group": group, "features": label, "blocks": list(blocks), "method": method,
               "normalisation": normalisation, "pre": pre,
               "reduction": reduction if reduction == "none" else f"{reduction}-{dims}",
               "ari": float(np.mean(aris)), "ari_std": float(np.std(aris)), "nmi": float(np.mean(nmis)),
               "nmi_std": float(np.std(nmis)), "silhouette": float(np.mean(sils)),
               "seconds": float(np.mean(secs)), "ari_per_seed": [round(a, 4) for a in aris]}
        results.append(row)
        print(f"  {group:6s} {label:28s} {method:13s} {row['normalisation']:6s} {row['reduction']:13s} "
              f"ARI {row['ari']:.3f}±{row['ari_std']:.3f}  NMI {row['nmi']:.3f}  sil {row['silhouette']:.3f}  "
              f"{row['seconds']:.1f}s/run", flush=True)
    return results


def duplicates(workspace: Path) -> dict[str, Any]:
    from curata.cluster import duplicates_workspace
    from curata.workspace import Workspace

    ws = Workspace(workspace)
    cache = ws.root / "clusters" / "phash.parquet"
    cache.unlink(missing_ok=True)  # time the hashing, not the cache
    started = time.perf_counter()
    groups = duplicates_workspace(ws, "phash")
    seconds = time.perf_counter() - started
    items = ws.items()
    exact = len(items) - items["image_sha256"].nunique()
    return {"items": groups.items, "groups": len(groups.groups), "redundant_items": groups.duplicates,
            "identical_files_redundant": int(exact), "seconds": round(seconds, 2),
            "largest_groups": groups.groups[:3]}


def print_table(results: list[dict[str, Any]], seeds: int) -> dict[str, Any]:
    print(f"\nk={K}, mean ± std over {seeds} seed(s)")
    header = (f"{'group':6s} {'features':28s} {'algorithm':13s} {'norm':6s} {'reduction':13s} {'ARI':>13s} "
              f"{'NMI':>6s} {'silh.':>6s} {'s/run':>6s}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['group']:6s} {r['features']:28s} {r['method']:13s} {r['normalisation']:6s} {r['reduction']:13s} "
              f"{r['ari']:.3f} ± {r['ari_std']:.3f} {r['nmi']:6.3f} {r['silhouette']:6.3f} {r['seconds']:6.1f}")
    verdict = {}
    print()
    for group, target in TARGETS.items():
        rows = [r for r in results if r["group"] == group and "(extra)" not in r["features"]]
        best = max((r for r in rows if r["method"] == "kmeans"), key=lambda r: r["ari"])
        other = max(rows, key=lambda r: r["ari"])
        ok = best["ari"] >= target
        verdict[group] = {"target": target, "best_kmeans_ari": round(best["ari"], 4), "met_by_kmeans": ok,
                          "best_kmeans": f"{best['features']} {best['normalisation']} {best['reduction']}",
                          "best_any_ari": round(other["ari"], 4),
                          "best_any": f"{other['features']} {other['method']} {other['normalisation']} "
                                      f"{other['reduction']}",
                          "study": STUDY[group]}
        print(f"{group:6s} target ARI >= {target:.2f}: k-means best {best['ari']:.3f} ({best['features']}, "
              f"{best['normalisation']}, {best['reduction']}) -> {'MET' if ok else 'NOT MET'}; any algorithm "
              f"{other['ari']:.3f} ({other['method']}, {other['reduction']})   [study: {STUDY[group]}]")
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", "../shared/data")))
    parser.add_argument("--workspace", type=Path, default=None,
                        help="workspace to prepare or reuse (default: a temporary one, deleted afterwards)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--extra", action="store_true", help="also EfficientNet-Lite2 rows (computes it)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cluster.json"))
    args = parser.parse_args()
    if not (args.data / "flipkart" / "labels.csv").exists():
        print(f"skipped: {args.data / 'flipkart'} not found (pass --data or set CURATA_DATA)")
        return
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # UMAP: seeded runs are single-threaded
    tmp = None
    if args.workspace is None:
        tmp = tempfile.TemporaryDirectory(prefix="curata-bench-cluster-")
        args.workspace = Path(tmp.name) / "ws"
    rows = ROWS + (EXTRA_ROWS if args.extra else [])
    extractors = ["minilm", "tfidf", "effnet_lite0", "effnet_lite0_logits"] + (["effnet_lite2"] if args.extra else [])
    started = time.perf_counter()
    prepare(args.data, args.workspace, extractors)
    print(__doc__[__doc__.index("Protocol") : __doc__.index("Also timed")])
    results = run_rows(args.workspace, rows, args.seeds)
    verdict = print_table(results, args.seeds)
    dup = duplicates(args.workspace)
    print(f"\nnear-duplicates (pHash, Hamming <= 8): {dup['groups']} groups, {dup['redundant_items']} redundant "
          f"items of {dup['items']} ({dup['identical_files_redundant']} are byte-identical files) "
          f"in {dup['seconds']} s")
    payload = {"dataset": "flipkart", "k": K, "seeds": args.seeds, "protocol": __doc__, "rows": results,
               "targets": verdict, "duplicates": dup, "seconds_total": round(time.perf_counter() - started, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(f"\nwritten {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
