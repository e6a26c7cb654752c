"""`quality_workspace`: suspicious labels, per-class outliers and near-duplicates of a workspace, as
JSON (reports/quality-latest.json) and a self-contained HTML page with thumbnails.

Memory: when the labelled items' feature blocks fit the memory budget (`curata.budget`) everything runs
on the whole matrix, as before. Past it, outliers are computed in two streamed passes over every item
(`streamed_class_outliers`), and suspicious labels, which need one model fitted per fold, run on a seeded
sample stratified by the label that fits the budget (`tasks.runner.training_sample`). The report says
which: `training_data` `{mode: all|sample, rows_used, rows_total, budget_bytes}` (as training runs do)
and `memory` `{mode: in_memory|streamed, budget_bytes}`. Near-duplicates by perceptual hash hold 8 bytes
per item, never a feature matrix; by embedding they need the matrix and are skipped with a note over it.
"""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from curata.budget import MemoryBudgetError, memory_budget, rows_within_budget
from curata.cluster.maps import make_thumbnails
from curata.cluster.runs import duplicates_workspace
from curata.features.engine import make_extractor
from curata.progress import SILENT, Reporter
from curata.quality.labels import class_outliers, streamed_class_outliers, suspicious_labels
from curata.tasks.base import concat_blocks
from curata.tasks.data import feature_row_bytes, iter_features, load_features, single_target
from curata.workspace import Workspace

MAX_LISTED = 60  # rows per section in the HTML page (the JSON has all of them)


def _columns(features: Sequence[str], target: str) -> list[str]:
    """The collection columns the checks read: ids, the feature keys and the target's column."""
    columns = ["id", "image_sha256", {"tag": "tags", "meta": "meta"}.get(target.partition(":")[0], "label")]
    if any(make_extractor(name).modality == "text" for name in features):
        columns.append("text")
    return columns


def quality_workspace(workspace: Workspace, features: Sequence[str] = ("effnet_lite0",), target: str = "label", *,
                      folds: int = 5, seed: int = 0, z_threshold: float = 3.5, duplicates: str | None = "phash",
                      reporter: Reporter = SILENT) -> dict[str, Any]:
    """Run the three checks; returns the summary (with `files`: the JSON and HTML paths)."""
    from curata.tasks.runner import training_sample

    if not workspace.exists:
        raise ValueError(f"no collection in workspace {workspace.root} (run `curata ingest` first)")
    features = list(features)
    items = workspace.items(_columns(features, target))
    labels = single_target(items, target)
    labelled = labels.notna().to_numpy()
    if labelled.sum() < 4:
        raise ValueError(f"target '{target}' has {int(labelled.sum())} labelled items; quality checks need 4+")
    rows = items[labelled].reset_index(drop=True)
    y_all = labels[labelled].astype(str).to_numpy()
    del items  # only the labelled rows' ids, keys and labels are kept
    budget = memory_budget()
    advance = reporter.task("suspicious labels and outliers", total=2)
    pick = training_sample(y_all, feature_row_bytes(features), seed, folds)
    if pick is None:  # the matrix fits: every check on all of it
        feature_set, keep = load_features(workspace, features, rows)
        x = concat_blocks(feature_set.blocks)
        ids, y = rows["id"][keep].tolist(), y_all[keep].tolist()
        label_check = suspicious_labels(ids, x, y, folds=folds, seed=seed)
        advance(1)
        outliers = class_outliers(ids, x, y, z_threshold=z_threshold)
        skipped, used, mode = dict(feature_set.skipped), len(ids), "in_memory"
        del x
    else:  # over budget: labels on a stratified sample, outliers streamed over every item
        sample_set, sample_keep = load_features(workspace, features, rows.iloc[pick])
        sample_ids = rows["id"].iloc[pick][sample_keep].tolist()
        label_check = suspicious_labels(sample_ids, concat_blocks(sample_set.blocks),
                                        y_all[pick][sample_keep].tolist(), folds=folds, seed=seed)
        advance(1)
        counted: dict[str, int] = {"kept": 0, "missing": 0}
        batch = rows_within_budget(feature_row_bytes(features))

        def chunks() -> Iterator[tuple[list[str], np.ndarray, list[str]]]:
            counted.update(kept=0, missing=0)
            for start, blocks, keep in iter_features(workspace, features, rows, batch):
                part = slice(start, start + len(keep))
                counted["kept"] += int(keep.sum())
                counted["missing"] += int((~keep).sum())
                if keep.any():
                    yield rows["id"].iloc[part][keep].tolist(), concat_blocks(blocks), y_all[part][keep].tolist()

        outliers = streamed_class_outliers(chunks, z_threshold=z_threshold)
        skipped = {f"no {'+'.join(features)} vector": counted["missing"]} if counted["missing"] else {}
        used, mode = counted["kept"], "streamed"
    advance(1)
    summary: dict[str, Any] = {
        "target": target, "features": features, "items": used,
        "skipped": {**skipped, "unlabelled": int((~labelled).sum())},
        "training_data": {"mode": "all" if pick is None else "sample", "rows_used": int(label_check["items"]),
                          "rows_total": len(rows), "budget_bytes": budget},
        "memory": {"mode": mode, "budget_bytes": budget},
        "labels": label_check, "outliers": outliers, "notes": []}
    if duplicates:
        try:
            summary["duplicates"] = duplicates_workspace(workspace, duplicates, reporter=reporter).to_dict()
        except MemoryBudgetError as e:  # embedding duplicates need the whole matrix
            summary["duplicates"] = None
            summary["notes"].append(f"near-duplicates skipped: {e} (use the phash method)")
    path = workspace.write_report("quality", summary)
    page = path.with_suffix(".html")
    listed = sorted(_listed_ids(summary))
    found = workspace.collection.by_ids(listed, ["id", "image"]) if listed else None
    images = dict(zip(found["id"], found["image"], strict=True)) if found is not None else {}
    page.write_text(render_html(summary, images), encoding="utf-8")
    summary["files"] = {"json": str(path), "html": str(page)}
    return summary


def _listed_ids(summary: Mapping[str, Any]) -> set[str]:
    """The items the HTML page shows (and needs thumbnails of)."""
    suspicious = summary["labels"]["suspicious"][:MAX_LISTED]
    outliers = summary["outliers"][:MAX_LISTED]
    groups = (summary.get("duplicates") or {}).get("members", [])[:MAX_LISTED]
    return {r["id"] for r in suspicious} | {o["id"] for o in outliers} | {i for g in groups for i in g["ids"][:8]}


def _thumbs(ids: list[str], images: Mapping[str, str]) -> dict[str, str]:
    sources = [images.get(i) for i in ids]
    found = make_thumbnails(sources, np.arange(len(ids)))
    return {ids[i]: uri for i, uri in found.items()}


def _img(uri: str | None, title: str) -> str:
    if not uri:
        return f'<div class="missing" title="{html.escape(title)}">no image</div>'
    return f'<img src="{uri}" alt="{html.escape(title)}" title="{html.escape(title)}">'


def render_html(summary: dict[str, Any], images: Mapping[str, str]) -> str:
    """The report page: every picture embedded as a small JPEG data URI, so the file stands alone.
    `images`: id -> image path, at least of the items listed."""
    suspicious = summary["labels"]["suspicious"][:MAX_LISTED]
    outliers = summary["outliers"][:MAX_LISTED]
    groups = (summary.get("duplicates") or {}).get("members", [])[:MAX_LISTED]
    thumbs = _thumbs(sorted(_listed_ids(summary)), images)
    sampled = summary.get("training_data", {}).get("mode") == "sample"
    esc = html.escape
    parts = [f"<h1>Collection quality: {esc(str(summary['target']))} on {esc(', '.join(summary['features']))}</h1>",
             f"<p>{summary['items']} labelled items; out-of-fold accuracy of the checking model "
             f"{summary['labels']['out_of_fold_accuracy']:.3f} ({summary['labels']['folds']}-fold"
             + (f", on a stratified sample of {summary['labels']['items']} that fits the memory budget"
                if sampled else "") + ").</p>",
             f"<h2>Suspicious labels ({len(summary['labels']['suspicious'])})</h2>",
             "<p>The label disagrees with a confident out-of-fold prediction; largest margin first.</p>",
             "<table><tr><th></th><th>item</th><th>label (p)</th><th>suggested (p)</th><th>margin</th></tr>"]
    for r in suspicious:
        parts.append(f"<tr><td>{_img(thumbs.get(r['id']), r['id'])}</td><td>{esc(r['id'])}</td>"
                     f"<td>{esc(r['label'])} ({r['label_probability']:.2f})</td>"
                     f"<td>{esc(r['suggested'])} ({r['suggested_probability']:.2f})</td>"
                     f"<td>{r['margin']:.2f}</td></tr>")
    parts.append("</table>")
    parts.append(f"<h2>Outliers within their class ({len(summary['outliers'])})</h2><div class='grid'>")
    for o in outliers:
        parts.append(f"<figure>{_img(thumbs.get(o['id']), o['id'])}<figcaption>{esc(o['id'])}<br>"
                     f"{esc(o['label'])}, z {o['z']:.1f}</figcaption></figure>")
    parts.append("</div>")
    if summary.get("duplicates") is not None:
        dup = summary["duplicates"]
        parts.append(f"<h2>Near-duplicates ({dup['groups']} groups, {dup['redundant_items']} redundant items, "
                     f"{esc(dup['method'])} threshold {dup['threshold']})</h2>")
        for g in groups:
            pictures = "".join(f"<figure>{_img(thumbs.get(i), i)}<figcaption>{esc(i)}</figcaption></figure>"
                               for i in g["ids"][:8])
            parts.append(f"<div class='grid group'>{pictures}</div>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
             "td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}img{width:72px;height:72px;"
             "object-fit:contain;image-rendering:pixelated;background:#eee}.grid{display:flex;flex-wrap:wrap;gap:8px}"
             "figure{margin:0;width:110px;font-size:11px;word-break:break-all}.group{border:1px solid #ccc;"
             "padding:6px;margin:6px 0}.missing{width:72px;height:72px;background:#fdd;font-size:10px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>curata quality</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")

