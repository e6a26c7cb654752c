"""Linear probe vs test-time augmentation vs fine-tuning of EfficientNet-Lite0, on real collections.

    python benchmarks/finetune.py [--data ../shared/data] [--only flipkart,flipkart_l2,cryptopunks]
                                  [--blocks 1,2] [--epochs 12] [--punks-per-type 500]

Protocol (printed with the results):
  * one seeded (seed 0) stratified split per collection: 60 % train, 20 % validation, 20 % test.
    Everything is fitted on train, every choice is made on validation, test is scored once per row.
  * collections: flipkart `label` (7 categories, 1047 photos); flipkart `label_l2` restricted to the
    sub-categories with >= 5 photos (so each part has one); cryptopunks `label` (type) on a seeded
    subsample: every Alien, Ape and Zombie (121) + --punks-per-type Male and Female each. The punks are
    24 px pixel art, far from ImageNet photos, and Male vs Female is a few pixels of hair and face:
    where a probe of ImageNet features and a fine-tuned network can be expected to differ.
  * probe: `default_logreg` (standardised features + logistic regression) on effnet_lite0 features,
    C in {0.001 .. 1} chosen on validation accuracy; the same on effnet_lite0_tta features (mean of
    image, mirror, centre crop, mirrored crop); the same on effnet_lite0 + effnet_lite2 (each block
    L2-normalised, concatenated).
  * fine-tune: `curata.tasks.finetune.FineTuner` (last `blocks` MBConv blocks + head conv + new linear
    head, LP-FT, early-stopped on validation) for each --blocks value; the one with the best
    validation accuracy is scored on test.
  * fit seconds: feature extraction of train + validation and the C search (probes), `FineTuner.fit`
    (trunk activations of train + validation, training); on this machine's shared CPU cores.
Data folders absent -> the collection is skipped with a message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import train_test_split

from curata.features.concat import join_blocks
from curata.features.efficientnet import EfficientNetLite0, EfficientNetLite0TTA, EfficientNetLite2
from curata.imageio import load_image
from curata.paths import default_threads
from curata.tasks.colour import default_logreg
from curata.tasks.finetune import FineTuner

SUITES = ("flipkart", "flipkart_l2", "cryptopunks")
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SEED = 0


class PrintReporter:
    """Prints each fine-tuning stage when it ends (the Rich bar of the CLI is no use in a log)."""

    def task(self, description: str, total: int | None):
        state = {"done": 0, "t": time.perf_counter()}

        def advance(n: int = 1) -> None:
            state["done"] += n
            if (total is not None and state["done"] >= total) or description.endswith("epochs"):
                print(f"    {description}: {state['done']}/{total} after {time.perf_counter() - state['t']:.0f} s",
                      flush=True)

        return advance


def load_suite(name: str, data: Path, punks_per_type: int) -> tuple[list[np.ndarray], np.ndarray] | None:
    folder = data / ("cryptopunks" if name == "cryptopunks" else "flipkart")
    if not (folder / "labels.csv").exists():
        print(f"[skip] {name}: {folder / 'labels.csv'} not found (pass --data or set CURATA_DATA)")
        return None
    df = pd.read_csv(folder / "labels.csv")
    column = "label_l2" if name == "flipkart_l2" else "label"
    df = df[df[column].notna()]
    if name == "flipkart_l2":
        counts = df[column].value_counts()
        df = df[df[column].isin(counts[counts >= 5].index)]
    if name == "cryptopunks":
        rng = np.random.default_rng(SEED)
        parts = []
        for _label, group in df.groupby(column, sort=True):
            if len(group) > punks_per_type:
                group = group.iloc[np.sort(rng.choice(len(group), punks_per_type, replace=False))]
            parts.append(group)
        df = pd.concat(parts).sort_index()
    # 280 px: enough for the TTA centre crop at Lite0's 224 px input (JPEGs decode in draft mode)
    images = [load_image(folder / p, max_side=280) for p in df["path"]]
    return images, df[column].astype(str).to_numpy()


def split(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=SEED)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=SEED)
    return np.sort(train), np.sort(val), np.sort(test)


def extract(extractor, images: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([extractor.transform(images[i : i + 32]) for i in range(0, len(images), 32)])


def scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {"accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
            "macro_f1": round(float(f1_score(y_true, y_pred, average="macro", zero_division=0)), 4)}


def probe(name: str, feats: np.ndarray, y: np.ndarray, parts, extract_s: float) -> dict:
    """Logistic regression on train, C chosen on validation accuracy, scored on test once."""
    train, val, test = parts
    t = time.perf_counter()
    best = None
    for c in C_GRID:
        model = default_logreg(c, SEED).fit(feats[train], y[train])
        acc = accuracy_score(y[val], model.predict(feats[val]))
        if best is None or acc > best[0]:
            best = (acc, c, model)
    assert best is not None
    fit_s = extract_s + time.perf_counter() - t
    return {"model": name, "chosen": f"C={best[1]}", "val_accuracy": round(float(best[0]), 4),
            **scores(y[test], best[2].predict(feats[test])), "fit_s": round(fit_s, 1)}


def timed_features(extractor, images: list[np.ndarray], parts) -> tuple[np.ndarray, float]:
    """Features of every image, and the seconds the train + validation part took (what a fit pays)."""
    train, val, _ = parts
    t = time.perf_counter()
    feats = extract(extractor, images)
    seconds = (time.perf_counter() - t) * (len(train) + len(val)) / len(images)
    return feats, seconds


def run_suite(name: str, images: list[np.ndarray], y: np.ndarray, args) -> list[dict]:
    parts = split(y)
    train, val, test = parts
    print(f"\n== {name}: {len(y)} images, {len(set(y))} classes; train {len(train)} / val {len(val)} / "
          f"test {len(test)}", flush=True)
    threads = default_threads()
    rows = []
    plain, plain_s = timed_features(EfficientNetLite0(threads=threads), images, parts)
    rows.append(probe("probe effnet_lite0", plain, y, parts, plain_s))
    tta, tta_s = timed_features(EfficientNetLite0TTA(threads=threads), images, parts)
    rows.append(probe("probe effnet_lite0_tta", tta, y, parts, tta_s))
    if not args.no_lite2:
        lite2, lite2_s = timed_features(EfficientNetLite2(threads=threads), images, parts)
        rows.append(probe("probe effnet_lite0+lite2", join_blocks([plain, lite2]), y, parts, plain_s + lite2_s))
    for row in rows:
        print(f"  {row['model']:<28} {row['chosen']:<9} val {row['val_accuracy']:.3f}  test acc "
              f"{row['accuracy']:.3f}  F1 {row['macro_f1']:.3f}  fit {row['fit_s']:.0f} s", flush=True)
    tr_images, va_images = [images[i] for i in train], [images[i] for i in val]
    candidates = []
    for blocks in args.blocks:
        model = FineTuner("lite0", blocks, epochs=args.epochs, seed=SEED, threads=threads)
        model.fit(tr_images, y[train], va_images, y[val], reporter=PrintReporter())
        best = model.history_[model.best_epoch_ - 1]
        print(f"  fine-tune blocks={blocks}: best epoch {model.best_epoch_}/{len(model.history_)} val acc "
              f"{best['val_accuracy']:.3f} loss {best['val_loss']:.3f}  fit {model.fit_seconds_:.0f} s", flush=True)
        candidates.append((best["val_accuracy"], -best["val_loss"], blocks, model))
    val_acc, _, blocks, model = max(candidates, key=lambda c: c[:2])
    t = time.perf_counter()
    pred = model.predict([images[i] for i in test])
    rows.append({"model": "fine-tuned lite0", "chosen": f"blocks={blocks},epoch={model.best_epoch_}",
                 "val_accuracy": round(float(val_acc), 4), **scores(y[test], pred),
                 "fit_s": round(model.fit_seconds_, 1), "predict_s": round(time.perf_counter() - t, 1),
                 "candidates": {f"blocks={c[2]}": {"val_accuracy": c[0], "epochs_run": len(c[3].history_),
                                                   "best_epoch": c[3].best_epoch_, "fit_s": round(c[3].fit_seconds_, 1)}
                                for c in candidates}})
    base = rows[0]
    for row in rows:
        row["suite"] = name
        row["d_accuracy_vs_probe"] = round(row["accuracy"] - base["accuracy"], 4)
        row["d_macro_f1_vs_probe"] = round(row["macro_f1"] - base["macro_f1"], 4)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"\n{'suite':<12} {'model':<26} {'chosen on val':<20} {'val acc':>7} {'test acc':>8} {'macro-F1':>8} "
          f"{'d acc':>6} {'d F1':>6} {'fit s':>6}")
    for r in rows:
        print(f"{r['suite']:<12} {r['model']:<26} {r['chosen']:<20} {r['val_accuracy']:>7.3f} {r['accuracy']:>8.3f} "
              f"{r['macro_f1']:>8.3f} {r['d_accuracy_vs_probe']:>+6.3f} {r['d_macro_f1_vs_probe']:>+6.3f} "
              f"{r['fit_s']:>6.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", "../shared/data")))
    parser.add_argument("--only", help="comma-separated suites: " + ",".join(SUITES))
    parser.add_argument("--blocks", default="1,2", help="fine-tuned block counts to choose from on validation")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--punks-per-type", type=int, default=500)
    parser.add_argument("--no-lite2", action="store_true", help="skip the lite0+lite2 probe")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/finetune.json"))
    args = parser.parse_args()
    args.blocks = [int(b) for b in args.blocks.split(",")]
    suites = args.only.split(",") if args.only else list(SUITES)
    unknown = set(suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s) {', '.join(sorted(unknown))}; expected {', '.join(SUITES)}")
    print(__doc__.split("Protocol", 1)[1])
    if not args.data.is_dir():
        print(f"[skip] data folder {args.data} not found (pass --data or set CURATA_DATA); nothing measured")
        return 0
    rows: list[dict] = []
    started = time.perf_counter()
    for name in suites:
        loaded = load_suite(name, args.data, args.punks_per_type)
        if loaded is not None:
            rows.extend(run_suite(name, *loaded, args))
    if not rows:
        return 0
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = {**previous.get("results", {}), **{name: [r for r in rows if r["suite"] == name] for name in suites}}
    args.out.write_text(json.dumps({
        "protocol": {"split": "stratified 60/20/20, seed 0", "c_grid": C_GRID, "blocks": args.blocks,
                     "epochs": args.epochs, "punks_per_type": args.punks_per_type},
        "machine": {"cpu_threads": default_threads(), "python": sys.version.split()[0],
                    "platform": platform.platform()},
        "seconds": round(time.perf_counter() - started, 1), "results": results}, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
