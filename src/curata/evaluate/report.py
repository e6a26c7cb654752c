"""The evaluation report every task writes: report.json, PNG plots in plots/, and one self-contained report.html.

The HTML loads nothing from elsewhere (CSS inline, plots as base64 data URIs), so it can be mailed or opened
offline. Labels, model names and notes come from user data: everything written into it is HTML-escaped.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from curata.evaluate import plots
from curata.evaluate.cv import CVResult, comparison_table
from curata.storage import is_remote, uploaded_folder

LOWER_IS_BETTER = {"fit_seconds"}
PROTOCOL_ORDER = ("task", "target", "features", "items_used", "skipped", "folds", "seed", "split", "groups",
                  "fit_all_seconds")
PROTOCOL_NAMES = {"items_used": "items used", "skipped": "items skipped (why)", "fit_all_seconds":
                  "fit on all items (s)", "split": "evaluation split"}


@dataclass
class _Plot:
    file: str
    caption: str
    png: bytes


def primary_metric(results: Sequence[CVResult]) -> str:
    """The metric models are ranked by: micro-F1 for multi-label tasks, macro-F1 otherwise."""
    return "micro_f1" if results and results[0].multilabel else "macro_f1"


def best_result(results: Sequence[CVResult]) -> CVResult | None:
    """The result with the highest mean primary metric (the first on ties); None for no results."""
    metric = primary_metric(results)
    scored = [r for r in results if metric in r.summary]
    return max(scored, key=lambda r: r.summary[metric]["mean"]) if scored else (results[0] if results else None)


def write_report(directory: Path, title: str, results: list[CVResult], *, protocol: dict[str, Any],
                 embedding: tuple[np.ndarray, list[str]] | None = None,
                 importance: list[tuple[str, float, float]] | None = None,
                 thresholds: dict[str, float] | None = None, notes: list[str] | None = None,
                 extra: dict[str, Any] | None = None, embedding_method: str = "tsne",
                 seed: int | None = None) -> dict[str, Path | list[Path]]:
    """Write report.json, plots/*.png and report.html into `directory`.

    `embedding` is (features, label per row) for a 2-D map of the data (`embedding_method`: pca, tsne or
    umap; tsne samples at most 2000 items). `importance` and `thresholds` describe the model fitted on all
    items. A plot that fails becomes a note, not a lost report. Returns {"json", "html", "plots": [paths]}.
    """
    if is_remote(directory):  # written locally, then uploaded (curata.storage.uploaded_folder)
        with uploaded_folder(directory) as local:
            paths = write_report(local, title, results, protocol=protocol, embedding=embedding,
                                 importance=importance, thresholds=thresholds, notes=notes, extra=extra,
                                 embedding_method=embedding_method, seed=seed)
        return {"json": directory / "report.json", "html": directory / "report.html",
                "plots": [directory / "plots" / p.name for p in paths["plots"]]}
    directory = Path(directory)
    plot_dir = directory / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for stale in plot_dir.glob("*.png"):  # a previous run's plots (e.g. of a model no longer compared)
        stale.unlink()
    notes = [str(n) for n in notes or []]
    seed = int(protocol.get("seed", 0) if seed is None else seed)
    table = comparison_table(results)
    metric = primary_metric(results)
    best = best_result(results)
    written: list[Path] = []
    errors: list[str] = []

    def plot(file: str, caption: str, draw: Callable[[], bytes]) -> _Plot | None:
        try:
            png = draw()
        except Exception as e:  # one broken plot must not cost the whole report
            errors.append(f"plot {file} failed: {type(e).__name__}: {e}")
            return None
        path = plot_dir / file
        path.write_bytes(png)
        written.append(path)
        return _Plot(f"plots/{file}", caption, png)

    slugs = dict(zip(map(id, results), _unique_slugs([r.name for r in results]), strict=True))
    curation = protocol.get("curation")
    if curation and not curation.get("curated_items") and curation.get("note"):  # else in its section
        notes.append(str(curation["note"]))
    body = [_protocol_section(protocol), _curation_section(curation),
            _comparison_section(table, metric, best, results, plot)]
    ordered = ([best] if best else []) + [r for r in results if r is not best]
    for result in ordered:
        body.append(_model_section(result, slugs[id(result)], result is best, len(results), plot,
                                   "held-out test" if "scored" in protocol else "pooled out-of-fold"))
    body.append(_fitted_section(importance, thresholds, plot))
    if embedding is not None:
        features, labels = embedding
        body.append(_section("Feature space", [
            _para("Each point is an item, placed by its features alone (no model involved): classes that form "
                  "separate clusters here are easy to tell apart."),
            _figure(plot(f"embedding-{embedding_method}.png", "items in 2-D, coloured by label",
                         lambda: plots.embedding_map(features, labels, method=embedding_method, seed=seed)))]))
    all_notes = notes + errors
    if all_notes:
        body.append(_section("Notes", ["<ul>" + "".join(f"<li>{escape(n)}</li>" for n in all_notes) + "</ul>"]))

    generated = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    payload = {
        "title": title, "generated": generated, "protocol": {k: v for k, v in protocol.items() if k != "curation"},
        "curation": curation, "primary_metric": metric,
        "best_model": best.name if best else None, "comparison": table, "results": [r.to_dict() for r in results],
        "importance": [{"feature": n, "mean": m, "std": s} for n, m, s in importance] if importance else None,
        "thresholds": thresholds, "notes": notes, "plot_errors": errors, "extra": extra or {},
        "plots": [p.relative_to(directory).as_posix() for p in written],
    }
    json_path = directory / "report.json"
    json_path.write_text(json.dumps(_jsonable(payload), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                         encoding="utf-8")
    html_path = directory / "report.html"
    html_path.write_text(_page(title, generated, body), encoding="utf-8")
    return {"json": json_path, "html": html_path, "plots": written}


# Sections -------------------------------------------------------------------------------------------------


def _protocol_section(protocol: dict[str, Any]) -> str:
    keys = [k for k in PROTOCOL_ORDER if k in protocol] + [k for k in protocol if k not in PROTOCOL_ORDER
                                                           and k != "curation"]  # its own section
    rows = []
    for key in keys:
        value = protocol[key]
        if key == "skipped" and not value:
            value = "none"
        if key == "scored":  # the scored ids are in report.json; the page says how many
            value = {k: v for k, v in value.items() if k != "ids"}
        name = PROTOCOL_NAMES.get(key, key.replace("_", " "))
        rows.append(f"<tr><th>{escape(name)}</th><td>{_value_html(value)}</td></tr>")
    lead = ("Held-out test: the candidates were fitted on train and compared on val; the chosen model was "
            "fitted on train+val and scored once on test, items no model or choice ever saw (the ids scored are "
            "in report.json)." if "scored" in protocol else
            "Cross-validated: each model is refitted on every training fold and scored on the held-out fold, "
            "so every number below is measured on items the model did not learn from; ± is the standard "
            "deviation over folds.")
    return _section("Protocol", [
        _para(lead),
        f"<table class='kv'>{''.join(rows)}</table>"])


def _comparison_section(table: list[dict[str, Any]], metric: str, best: CVResult | None,
                        results: Sequence[CVResult], plot: Callable[..., _Plot | None]) -> str:
    if not table:
        return _section("Models", [_para("No model was evaluated.")])
    columns = [k for k in table[0] if k != "model" and not k.endswith("_std")]
    winners = {}
    for column in columns:
        values = [r[column] for r in table if isinstance(r.get(column), int | float)]
        if values:
            winners[column] = min(values) if column in LOWER_IS_BETTER else max(values)
    head = "".join(f"<th>{escape(_metric_name(c))}</th>" for c in ["model", *columns])
    rows = []
    for row in table:
        is_best = best is not None and row["model"] == best.name
        cells = [f"<td class='name'>{escape(str(row['model']))}{' <span class=tag>best</span>' if is_best else ''}"
                 "</td>"]
        for column in columns:
            value = row.get(column)
            if column.endswith("seconds") and isinstance(value, int | float):
                text = f"{value:.2f} s"
            else:
                text = _fmt(value) + (f" ± {_fmt(row[column + '_std'])}" if column + "_std" in row else "")
            strong = value is not None and value == winners.get(column) and len(table) > 1
            cells.append(f"<td class='num'>{'<b>' + escape(text) + '</b>' if strong else escape(text)}</td>")
        rows.append(f"<tr{' class=best' if is_best else ''}>{''.join(cells)}</tr>")
    parts = [_para(f"Ranked by {escape(_metric_name(metric))}; the best value of each column is in bold."),
             f"<table class='grid'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"]
    if len(results) > 1:
        parts.append(_figure(plot(f"comparison-{metric}.png", f"{_metric_name(metric)} per model",
                                  lambda: plots.comparison_bars(table, metric))))
    return _section("Models", parts)


def _curation_section(curation: dict[str, Any] | None) -> str:
    """What a curator changed in the target, and (when anything was curated) the chosen model trained on the
    source's values vs the curated ones, on the same folds, both scored against the curated values."""
    if not curation or not curation.get("curated_items"):
        return ""  # nothing curated: a note says so
    what = "label" if curation.get("field") == "label" else "tags"
    parts = [_para(f"<b>{int(curation['curated_items'])}</b> of the items used have their {what} set by a curator; "
                   f"<b>{int(curation.get('changed_from_source') or 0)}</b> of them differ from the source's "
                   f"value for the target <code>{escape(str(curation.get('target', '')))}</code>"
                   + (f" ({int(curation['no_source_value'])} had none at the source)"
                      if curation.get("no_source_value") else "") + ".")]
    comparison = curation.get("comparison")
    if comparison:
        columns = [k for k in comparison["curated"] if not k.endswith("_std")]
        head = "".join(f"<th>{escape(_metric_name(c))}</th>" for c in ["trained on", *columns])
        rows = []
        for side, title in (("source", "the source's values"), ("curated", "the curated values")):
            metrics = comparison.get(side) or {}
            cells = "".join(f"<td class='num'>{escape(_fmt(metrics.get(c)))}"
                            + (f" ± {escape(_fmt(metrics[c + '_std']))}" if c + "_std" in metrics else "") + "</td>"
                            for c in columns)
            rows.append(f"<tr><td class='name'>{escape(title)}</td>{cells}</tr>")
        parts.append(_para(f"Model <b>{escape(str(comparison.get('model', '')))}</b>, cross-validated on the same "
                           "folds twice, both times scored against the curated values (the curator's truth); "
                           "items without a source value only ever appear in the source-trained model's test "
                           "folds."))
        parts.append(f"<table class='grid'><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    if curation.get("note"):
        parts.append(_para(escape(str(curation["note"]))))
    return _section("Curation", parts)


def _model_section(result: CVResult, slug: str, is_best: bool, n_models: int,
                   plot: Callable[..., _Plot | None], scored: str = "pooled out-of-fold") -> str:
    overall = result.overall
    pooled = {k: v for k, v in overall.items() if isinstance(v, int | float)}
    lead = "On the held-out test items" if scored == "held-out test" else "Pooled over all out-of-fold predictions"
    parts = [_para(f"{lead}: " + ", ".join(
        f"{escape(_metric_name(k))} <b>{_fmt(v)}</b>" for k, v in pooled.items()) + ".") if pooled else ""]
    if result.multilabel:
        per_label = overall.get("per_label", {})
        parts.append(_figure(plot(f"{slug}-per-label-f1.png", f"F1 per label ({scored})",
                                  lambda: plots.per_class_bars(per_label, "f1", title="Per-label F1"))))
    else:
        labels = overall.get("labels", result.labels)
        confusion = overall.get("confusion")
        if confusion is not None:
            parts.append(_figure(plot(f"{slug}-confusion.png", f"confusion matrix ({scored})",
                                      lambda: plots.confusion_heatmap(confusion, labels))))
            parts.append(_confused_pairs(confusion, labels))
        per_class = overall.get("per_class", {})
        parts.append(_figure(plot(f"{slug}-per-class-f1.png", f"F1 per class ({scored})",
                                  lambda: plots.per_class_bars(per_class, "f1"))))
    parts.append(_folds_table(result.folds))
    heading = f"Model: {result.name}" + (" (best)" if is_best and n_models > 1 else "")
    content = "".join(p for p in parts if p)
    if is_best or n_models == 1:
        return _section(heading, [content])
    return f"<details class='model'><summary>{escape(heading)}</summary>{content}</details>"


def _fitted_section(importance: list[tuple[str, float, float]] | None, thresholds: dict[str, float] | None,
                    plot: Callable[..., _Plot | None]) -> str:
    parts = []
    if thresholds:
        parts.append(_para("Per-label decision thresholds: a label is predicted when its score reaches its "
                           "threshold."))
        parts.append(_figure(plot("thresholds.png", "per-label thresholds", lambda: plots.threshold_bars(thresholds))))
    if importance:
        parts.append(_figure(plot("importance.png", "feature importance",
                                  lambda: plots.feature_importance_bars(importance))))
    return _section("Model fitted on all items", parts) if parts else ""


def _confused_pairs(confusion: Sequence[Sequence[float]], labels: Sequence[str], top: int = 10) -> str:
    """The most frequent mistakes in words: readable when the heatmap has too many classes to annotate."""
    counts = np.asarray(confusion, dtype=float)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    totals = counts.sum(axis=1)
    rows = []
    for flat in order:
        i, j = divmod(int(flat), counts.shape[1])
        if off[i, j] <= 0:
            break
        rows.append(f"<tr><td>{escape(str(labels[i]))}</td><td>{escape(str(labels[j]))}</td>"
                    f"<td class='num'>{int(off[i, j])}</td><td class='num'>{off[i, j] / totals[i]:.0%}</td></tr>")
    if not rows:
        return _para("No confusions: every out-of-fold prediction was right.")
    return ("<details><summary>Most frequent confusions</summary><table class='grid'><thead><tr><th>true</th>"
            "<th>predicted as</th><th>items</th><th>share of true</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></details>")


def _folds_table(folds: list[dict[str, Any]]) -> str:
    if not folds:
        return ""
    columns = list(folds[0])
    head = "".join(f"<th>{escape(_metric_name(c))}</th>" for c in ["fold", *columns])
    rows = "".join("<tr><td>" + str(i + 1) + "</td>" + "".join(f"<td class='num'>{escape(_fmt(f.get(c)))}</td>"
                                                               for c in columns) + "</tr>"
                   for i, f in enumerate(folds))
    return (f"<details><summary>Per-fold metrics ({len(folds)} folds)</summary><table class='grid'><thead><tr>"
            f"{head}</tr></thead><tbody>{rows}</tbody></table></details>")


# HTML helpers ---------------------------------------------------------------------------------------------


CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:0 0 10px}
.meta{color:#666;font-size:.9em;margin-bottom:16px}
section,details.model{background:#fff;border:1px solid #e3e3e3;border-radius:8px;padding:16px 20px;margin:16px 0}
details.model>summary{font-size:1.15em;font-weight:600;cursor:pointer}
details summary{cursor:pointer;color:#345;margin:8px 0}
table{border-collapse:collapse;margin:8px 0;font-size:.92em}
th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
table.grid th{background:#f3f5f8}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.kv th{font-weight:600;color:#444;white-space:nowrap}
tr.best td{background:#fff6e5}.tag{background:#f58518;color:#fff;border-radius:4px;padding:0 6px;font-size:.8em}
figure{margin:12px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#666;font-size:.88em}ul.plain{margin:0;padding-left:18px}
"""


def _page(title: str, generated: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{escape(title)}</h1><div class='meta'>curata evaluation report · generated {escape(generated)}"
            "</div>" + "".join(b for b in body if b) + "</main></body></html>\n")


def _section(heading: str, parts: list[str]) -> str:
    return f"<section><h2>{escape(heading)}</h2>{''.join(p for p in parts if p)}</section>"


def _para(html_text: str) -> str:
    """A paragraph of text that is already HTML (callers escape what came from data)."""
    return f"<p>{html_text}</p>"


def _figure(item: _Plot | None) -> str:
    if item is None:
        return ""
    data = base64.b64encode(item.png).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{escape(item.caption)}'>"
            f"<figcaption>{escape(item.caption)} — <code>{escape(item.file)}</code></figcaption></figure>")


def _value_html(value: Any) -> str:
    if isinstance(value, dict):
        if not value:
            return "–"
        return "<ul class='plain'>" + "".join(f"<li>{escape(str(k))}: {_value_html(v)}</li>"
                                              for k, v in value.items()) + "</ul>"
    if isinstance(value, list | tuple):
        return escape(", ".join(str(v) for v in value)) if value else "–"
    return escape(_fmt(value))


def _metric_name(key: str) -> str:
    return key.replace("_", " ").replace(" f1", " F1").replace("f1", "F1")


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float | np.floating):
        return "–" if not math.isfinite(value) else f"{value:.3f}"
    return str(value)


def _unique_slugs(names: list[str]) -> list[str]:
    """File-name-safe, distinct slugs for model names (two models may share a name)."""
    out: list[str] = []
    taken: set[str] = set()
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")[:60] or "model"
        slug, k = base, 2
        while slug in taken:
            slug, k = f"{base}-{k}", k + 1
        taken.add(slug)
        out.append(slug)
    return out


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars and arrays unwrapped, paths as strings, NaN and infinities as null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
