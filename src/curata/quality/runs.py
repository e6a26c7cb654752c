"""`quality_workspace`: suspicious labels, per-class outliers and near-duplicates of a workspace, as
JSON (reports/quality-latest.json) and a self-contained HTML page with thumbnails."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from curata.cluster.maps import make_thumbnails
from curata.cluster.runs import duplicates_workspace
from curata.progress import SILENT, Reporter
from curata.quality.labels import class_outliers, suspicious_labels
from curata.tasks.base import concat_blocks
from curata.tasks.data import load_features, single_target
from curata.workspace import Workspace

MAX_LISTED = 60  # rows per section in the HTML page (the JSON has all of them)


def quality_workspace(workspace: Workspace, features: Sequence[str] = ("effnet_lite0",), target: str = "label", *,
                      folds: int = 5, seed: int = 0, z_threshold: float = 3.5, duplicates: str | None = "phash",
                      reporter: Reporter = SILENT) -> dict[str, Any]:
    """Run the three checks; returns the summary (with `files`: the JSON and HTML paths)."""
    if not workspace.exists:
        raise ValueError(f"no collection in workspace {workspace.root} (run `curata ingest` first)")
    items = workspace.items()
    labels = single_target(items, target)
    labelled = labels.notna().to_numpy()
    if labelled.sum() < 4:
        raise ValueError(f"target '{target}' has {int(labelled.sum())} labelled items; quality checks need 4+")
    rows = items[labelled]
    feature_set, keep = load_features(workspace, list(features), rows)
    rows = rows[keep]
    x = concat_blocks(feature_set.blocks)
    ids, y = rows["id"].tolist(), labels[labelled][keep].astype(str).tolist()
    summary: dict[str, Any] = {"target": target, "features": list(features), "items": len(ids),
                               "skipped": {**feature_set.skipped, "unlabelled": int((~labelled).sum())}}
    advance = reporter.task("suspicious labels and outliers", total=2)
    summary["labels"] = suspicious_labels(ids, x, y, folds=folds, seed=seed)
    advance(1)
    summary["outliers"] = class_outliers(ids, x, y, z_threshold=z_threshold)
    advance(1)
    if duplicates:
        summary["duplicates"] = duplicates_workspace(workspace, duplicates, reporter=reporter).to_dict()
    path = workspace.write_report("quality", summary)
    page = path.with_suffix(".html")
    page.write_text(render_html(summary, dict(zip(items["id"], items["image"], strict=True))), encoding="utf-8")
    summary["files"] = {"json": str(path), "html": str(page)}
    return summary


def _thumbs(ids: list[str], images: dict[str, str]) -> dict[str, str]:
    sources = [images.get(i) for i in ids]
    found = make_thumbnails(sources, np.arange(len(ids)))
    return {ids[i]: uri for i, uri in found.items()}


def _img(uri: str | None, title: str) -> str:
    if not uri:
        return f'<div class="missing" title="{html.escape(title)}">no image</div>'
    return f'<img src="{uri}" alt="{html.escape(title)}" title="{html.escape(title)}">'


def render_html(summary: dict[str, Any], images: dict[str, str]) -> str:
    """The report page: every picture embedded as a small JPEG data URI, so the file stands alone."""
    suspicious = summary["labels"]["suspicious"][:MAX_LISTED]
    outliers = summary["outliers"][:MAX_LISTED]
    groups = (summary.get("duplicates") or {}).get("members", [])[:MAX_LISTED]
    wanted = {r["id"] for r in suspicious} | {o["id"] for o in outliers} | {i for g in groups for i in g["ids"][:8]}
    thumbs = _thumbs(sorted(wanted), images)
    esc = html.escape
    parts = [f"<h1>Collection quality: {esc(str(summary['target']))} on {esc(', '.join(summary['features']))}</h1>",
             f"<p>{summary['items']} labelled items; out-of-fold accuracy of the checking model "
             f"{summary['labels']['out_of_fold_accuracy']:.3f} ({summary['labels']['folds']}-fold).</p>",
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

