"""Feature extraction speed and memory, against the naive baselines, in one run.

    python benchmarks/features.py [--data ../shared/data] [--large 24] [--out benchmarks/results/features.json]

Inputs: `flipkart` (1047 JPEGs up to 640 px, from --data / CURATA_DATA) and `large`, a set of
3000x3000 JPEGs (q90, smooth gradients + texture + shapes) this script draws itself.

For every extractor, `curata.features.engine.compute` runs on a workspace holding the inputs
(ingest is done beforehand and not timed): the product path, with decoding, batching, caching
and Parquet writes. Each measurement runs in its own subprocess, so its peak RSS is its own.
Baselines, in the same run:
  (a) colour statistics the reference project's way: cv2.imread at full size, cvtColor to HSV and
      Lab, per-channel mean/std; curata must be >= 5x faster on the large images and agree within 1%.
  (b) EfficientNet-Lite0 in eager PyTorch, one image at a time (PIL decode, resize, normalise);
      curata's decode + preprocess + ONNX path must be >= 5x faster and >= 100 images/s. Measured
      for the fp32 model (`effnet_lite0`, the default) and the int8 one (`effnet_lite0_int8`); on
      flipkart the two feature sets are compared (cosine per image, 5-fold accuracy of the same
      logistic regression on the categories).
  (c) MiniLM: sentence-transformers one sentence at a time; curata must reach >= 250 sentences/s.
      Measured on two kinds of text: the flipkart product texts (name + description, ~60-130 word
      pieces after truncation: paragraphs, not sentences) through the workspace engine, and real
      sentences (`sentences`: the 5 human captions of each coco_mini photo and the trait sentences of
      the first 1000 CryptoPunks, ~10-20 word pieces) through the extractor's batched `transform`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

IMAGE_EXTRACTORS = ("color_stats", "color_hist", "palette", "orb_bovw", "sift_bovw", "effnet_lite0",
                    "effnet_lite0_int8")
TEXT_EXTRACTORS = ("minilm", "tfidf", "word2vec")


def _peak_mb() -> float:
    """Peak RSS of this process. VmHWM, not ru_maxrss: the latter survives fork+exec, so a child would
    report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def draw_large_jpegs(folder: Path, n: int, size: int = 3000) -> None:
    """Photo-like test images (smooth colour gradients, grain, hard-edged discs), as JPEG q90: the
    same drawing the int8 calibration uses."""
    import cv2

    from curata.features.efficientnet import calibration_images

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (img,) = calibration_images(1, size, seed=i)
        cv2.imwrite(str(folder / f"large_{i:03d}.jpg"), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])


def _child(kind: str, name: str, target: str) -> dict:
    """One measurement in a fresh process. `target` is a workspace (curata) or a folder (baselines)."""
    started = time.perf_counter()
    if kind == "curata":
        from curata.features.engine import compute, load_matrix, make_extractor
        from curata.workspace import Workspace

        ws = Workspace(target)
        extractor = make_extractor(name)
        if extractor.modality == "image" and name.startswith("effnet"):
            # export/load the ONNX model the engine will use before timing: a one-off cost
            extractor.single_threaded().session  # noqa: B018
        elif name == "minilm":
            extractor.session, extractor.tokenizer  # noqa: B018
        started = time.perf_counter()
        run = compute(extractor, ws, batch_size=32)
        seconds = time.perf_counter() - started
        out = {"n": run.computed, "errors": run.errors, "seconds": seconds}
        if name == "color_stats":
            matrix, _ = load_matrix(ws, extractor)
            ids = [Path(p).name for p in ws.items()["image"]]
            out["vectors"] = dict(zip(ids, matrix.tolist(), strict=True))
        return {**out, "peak_rss_mb": _peak_mb()}
    files = sorted(Path(target).glob("*.jpg"))
    if kind == "naive_color":
        import cv2

        vectors = {}
        for path in files:
            bgr = cv2.imread(str(path))
            feats = []
            for space in (bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV), cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)):
                feats.append(space.reshape(-1, 3).mean(0))
            stds = [s.reshape(-1, 3).std(0) for s in
                    (bgr, cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV), cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB))]
            vectors[path.name] = np.concatenate(feats + stds).tolist()
        return {"n": len(files), "seconds": time.perf_counter() - started, "vectors": vectors,
                "peak_rss_mb": _peak_mb()}
    if kind == "naive_effnet":
        import torch
        from PIL import Image

        from curata.features.efficientnet import build_torch_model

        torch.set_num_threads(os.cpu_count() or 2)
        model = build_torch_model("lite0").eval()
        started = time.perf_counter()
        with torch.no_grad():
            for path in files:
                im = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
                x = (torch.from_numpy(np.asarray(im, np.float32)) - 127.0) / 128.0
                model(x.permute(2, 0, 1)[None])
        return {"n": len(files), "seconds": time.perf_counter() - started, "peak_rss_mb": _peak_mb()}
    if kind == "curata_sentences":
        from curata.features.text import MiniLMText

        extractor = MiniLMText()
        extractor.session, extractor.tokenizer  # load before timing  # noqa: B018
        texts = json.loads(Path(target).read_text())
        started = time.perf_counter()
        extractor.transform(texts)
        return {"n": len(texts), "seconds": time.perf_counter() - started, "peak_rss_mb": _peak_mb()}
    if kind == "naive_minilm":  # the reference implementation, sentence-transformers on torch
        import torch
        from sentence_transformers import SentenceTransformer

        from curata.features.text import minilm_path

        torch.set_num_threads(os.cpu_count() or 2)
        model = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
        model.max_seq_length = 128
        texts = json.loads(Path(target).read_text())
        started = time.perf_counter()
        for text in texts:
            model.encode([text])
        return {"n": len(texts), "seconds": time.perf_counter() - started, "peak_rss_mb": _peak_mb()}
    raise ValueError(kind)


def real_sentences(data: Path) -> list[str]:
    """Human captions of coco_mini (5 per photo) and the first 1000 CryptoPunks trait sentences."""
    import pandas as pd

    out: list[str] = []
    coco, punks = data / "coco_mini" / "labels.csv", data / "cryptopunks" / "labels.csv"
    if coco.is_file():
        out += [c.strip() for cell in pd.read_csv(coco)["captions"].fillna("") for c in cell.split("|") if c.strip()]
    if punks.is_file():
        out += pd.read_csv(punks)["text"].fillna("").head(1000).tolist()
    return out


def int8_agreement(ws_fp32: Path, ws_int8: Path) -> dict[str, float]:
    """How far the int8 features are from fp32: cosine per image, and the 5-fold accuracy of the same
    classifier (standardised logistic regression) on the flipkart categories with each."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from curata.features.engine import load_matrix, make_extractor
    from curata.workspace import Workspace

    out: dict[str, float] = {}
    matrices = {}
    for tag, path, name in (("fp32", ws_fp32, "effnet_lite0"), ("int8", ws_int8, "effnet_lite0_int8")):
        ws = Workspace(path)
        items = ws.items()
        matrices[tag], _ = load_matrix(ws, make_extractor(name), items)
        labels = items["label"].fillna("").astype(str).to_numpy()
    a, b = matrices["fp32"], matrices["int8"]
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    out["cosine_mean"], out["cosine_min"] = round(float(cos.mean()), 4), round(float(cos.min()), 4)
    keep = labels != ""
    folds = StratifiedKFold(5, shuffle=True, random_state=0)
    for tag, x in matrices.items():
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=2000))
        out[f"accuracy_{tag}"] = round(float(cross_val_score(model, x[keep], labels[keep], cv=folds).mean()), 4)
    return out


def run_child(kind: str, name: str, target: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--name", name, "--target", str(target)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fresh_copy(ws: Path, tmp: Path, tag: str) -> Path:
    """A copy of an ingested workspace without features, so each measurement computes from scratch."""
    dest = tmp / f"ws-{tag}"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ws, dest, ignore=shutil.ignore_patterns("features", "models"))
    return dest


def max_relative_error(ours: dict, reference: dict) -> float:
    worst = 0.0
    for key, ref in reference.items():
        a, b = np.asarray(ours[key]), np.asarray(ref)
        worst = max(worst, float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0))))
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CURATA_DATA", "../shared/data")))
    parser.add_argument("--large", type=int, default=24, help="number of 3000x3000 JPEGs to draw")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/features.json"))
    parser.add_argument("--only", help="comma-separated extractors to measure (default: all)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.name, args.target)))
        return 0

    from curata.ingest.pipeline import ingest
    from curata.workspace import Workspace

    only = set(args.only.split(",")) if args.only else None
    rows: list[dict] = []
    results: dict = {"cpu_count": os.cpu_count(), "rows": rows}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        large = tmp / "large"
        print(f"drawing {args.large} large JPEGs ...", flush=True)
        draw_large_jpegs(large, args.large)
        ingest(large, Workspace(tmp / "ws-large-base"))
        datasets = {"large": (tmp / "ws-large-base", large)}
        flipkart = args.data / "flipkart"
        if flipkart.is_dir():
            ingest(flipkart, Workspace(tmp / "ws-flipkart-base"))
            datasets["flipkart"] = (tmp / "ws-flipkart-base", flipkart / "images")
        else:
            print(f"flipkart not found under {args.data}: measuring the large images only")

        def record(dataset: str, what: str, res: dict, unit: str = "images") -> dict:
            row = {"dataset": dataset, "what": what, "n": res["n"], "seconds": round(res["seconds"], 3),
                   "per_second": round(res["n"] / res["seconds"], 1), "unit": unit,
                   "peak_rss_mb": round(res["peak_rss_mb"])}
            rows.append(row)
            print(f"  {dataset:<9} {what:<28} {row['per_second']:>8.1f} {unit}/s  peak {row['peak_rss_mb']:>5} MB",
                  flush=True)
            return row

        computed: dict[tuple[str, str], Path] = {}
        for dataset, (ws, folder) in datasets.items():
            names = IMAGE_EXTRACTORS + (TEXT_EXTRACTORS if dataset == "flipkart" else ())
            for name in names:
                if only and name not in only:
                    continue
                if dataset == "large" and name not in ("color_stats", "effnet_lite0", "effnet_lite0_int8", "palette",
                                                       "color_hist"):
                    continue
                res = run_child("curata", name, _fresh_copy(ws, tmp, f"{dataset}-{name}"))
                unit = "sentences" if name in TEXT_EXTRACTORS else "images"
                record(dataset, f"curata {name}", res, unit)
                if name == "color_stats":
                    naive = run_child("naive_color", "", folder)
                    record(dataset, "naive color_stats (cv2 full)", naive)
                    results[f"color_stats_speedup[{dataset}]"] = round(naive["seconds"] / res["seconds"], 2)
                    results[f"color_stats_max_rel_error[{dataset}]"] = max_relative_error(res["vectors"],
                                                                                          naive["vectors"])
                if name.startswith("effnet_lite0"):
                    if f"naive-effnet-{dataset}" not in results:
                        naive = run_child("naive_effnet", "", folder)
                        results[f"naive-effnet-{dataset}"] = naive["seconds"]
                        record(dataset, "naive effnet_lite0 (eager, 1x1)", naive)
                    speedup = round(results[f"naive-effnet-{dataset}"] / res["seconds"], 2)
                    results[f"{name.replace('effnet_lite0', 'effnet')}_speedup[{dataset}]"] = speedup
                    computed[(dataset, name)] = tmp / f"ws-{dataset}-{name}"
                if name == "minilm":
                    import pandas as pd

                    texts = pd.read_csv(flipkart / "labels.csv")["text"].fillna("").tolist()
                    (tmp / "texts.json").write_text(json.dumps(texts))
                    naive = run_child("naive_minilm", "", tmp / "texts.json")
                    record(dataset, "naive minilm (1 at a time)", naive, "sentences")
                    results["minilm_speedup"] = round(naive["seconds"] / res["seconds"], 2)
        if ("flipkart", "effnet_lite0") in computed and ("flipkart", "effnet_lite0_int8") in computed:
            results["int8_vs_fp32[flipkart]"] = int8_agreement(computed[("flipkart", "effnet_lite0")],
                                                               computed[("flipkart", "effnet_lite0_int8")])
            print("  int8 against fp32 on flipkart:", results["int8_vs_fp32[flipkart]"], flush=True)
        sentences = real_sentences(args.data)
        if sentences and (not only or "minilm" in only):
            (tmp / "sentences.json").write_text(json.dumps(sentences))
            res = run_child("curata_sentences", "", tmp / "sentences.json")
            record("sentences", "curata minilm (batched)", res, "sentences")
            naive = run_child("naive_minilm", "", tmp / "sentences.json")
            record("sentences", "naive minilm (1 at a time)", naive, "sentences")
            results["minilm_speedup[sentences]"] = round(naive["seconds"] / res["seconds"], 2)
    print()
    for key, value in results.items():
        if key not in ("rows", "cpu_count") and not key.startswith("naive-"):
            print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
