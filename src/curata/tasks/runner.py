"""Train, evaluate and predict with tasks on a workspace: the library behind `curata train / evaluate /
predict` (and the service's predictions). Data flows one way: items -> target + features -> folds ->
cross-validation -> fit on everything -> bundle + report; or, held out, items -> train / val / test ->
candidates compared on val -> the chosen one fitted on train+val and scored once on test -> bundle + report.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from curata import objectstore
from curata.atomic import folder_view
from curata.budget import memory_budget, rows_within_budget
from curata.evaluate.cv import CVResult, chosen_model, comparison_table, cross_validate, take
from curata.evaluate.splits import held_out, make_folds
from curata.features.engine import load_matrix, make_extractor
from curata.features.store import store_dirname
from curata.imageio import load_image
from curata.progress import SILENT, Reporter, reporting
from curata.tasks.base import Task, single_threaded_blas
from curata.tasks.bundle import BundleError, Card, check_features, load_bundle, save_bundle
from curata.tasks.data import (
    TaskDataError,
    feature_chunks,
    feature_row_bytes,
    load_features,
    multilabel_rows,
    multilabel_target,
    rare_tags,
    rarest_label,
    single_target,
    source_items,
    stratified_sample,
    target_field,
)
from curata.workspace import Workspace

TASKS = {
    "classify": ("curata.tasks.classify", "ClassifyTask"),
    "colour": ("curata.tasks.colour", "ColourTask"),
    "tags": ("curata.tasks.tags", "TagTask"),
    "collection": ("curata.tasks.collection", "CollectionTask"),
    "category": ("curata.tasks.category", "CategoryTask"),
}


def task_class(name: str) -> type[Task]:
    aliases = {"color": "colour", "algorithm": "collection"}
    name = aliases.get(name, name)
    if name not in TASKS:
        raise TaskDataError(f"unknown task '{name}'; choose from {', '.join(TASKS)}")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)


@dataclass
class TrainOptions:
    task: str
    features: list[str] | None = None  # default: the task's
    target: str | None = None  # default: the task's (label, tag:<trait>, meta:<field>, tags[:<trait>])
    model: str | None = None  # default: the task's first candidate
    compare: bool = False  # cross-validate every candidate, not only the chosen model
    folds: int = 5
    seed: int = 0
    # Held-out protocol instead of k-fold: candidates are compared on val, the chosen one is scored on test
    # once. `use_split`: from the items' split column; `holdout`: a seeded stratified split, this fraction
    # of the items for val and as much for test.
    use_split: bool = False
    holdout: float | None = None
    final_fit: str = "train+val"  # held-out protocol: what the saved model is fitted on ("train+val" or "all")
    open_set: bool = False  # classify / collection: answer "unknown" for items unlike the training classes
    group: str | None = None  # target spec whose value groups items (near-duplicate families)
    min_per_class: int | None = None  # drop classes with fewer items (said in the report)
    min_tag_count: int = 5
    source: str | None = None  # only items of this source or collection
    name: str | None = None  # bundle / report name; default: <task>-<target>


@dataclass
class TrainResult:
    name: str
    results: list[CVResult]
    bundle: Path | None
    report: dict[str, Path]
    protocol: dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)
    # {"mode": "all" | "sample", "rows_used", "rows_total", "budget_bytes"}: see `training_sample`
    training_data: dict[str, Any] = field(default_factory=dict)
    # How many target values a curator set, and the chosen model trained on the source's values vs the curated
    # ones on the same folds (see `curation_summary`); None for a target only the source sets (meta:<field>).
    curation: dict[str, Any] | None = None
    # Held-out protocol: every candidate's scores on val (where the model was chosen); `results` is then the
    # chosen model's single score on test.
    validation: list[CVResult] = field(default_factory=list)

    def table(self) -> list[dict[str, Any]]:
        return comparison_table(self.results)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "model"


def prepare(workspace: Workspace, options: TrainOptions) -> tuple[Task, dict[str, np.ndarray], np.ndarray,
                                                                  list[str], pd.DataFrame, dict[str, Any]]:
    """Items, target and features for a task; everything dropped is counted with its reason."""
    if options.name is not None and _slug(options.name) != options.name:
        # A bundle's name is a folder name: say so rather than save it under another name without a word.
        raise TaskDataError(f"model name {options.name!r} is not a plain file name: use letters, digits, '_', "
                            f"'.' and '-' (e.g. {_slug(options.name)!r})")
    cls = task_class(options.task)
    items = workspace.items()
    if items.empty:
        raise TaskDataError(f"workspace {workspace.root} has no items; run `curata ingest` first")
    if options.source:
        items = items[(items["source"] == options.source) | (items["collection"] == options.source)]
        if items.empty:
            raise TaskDataError(f"no items from source or collection '{options.source}'")
    needed = list(cls.model_features.get(options.model or "", ()))  # classify's finetune reads the images
    features = list(options.features or needed or cls.features_for(workspace, items))
    features += [f for f in needed if f not in features]
    task = _build_task(cls, features, options)
    target = options.target or cls.default_target
    skipped: dict[str, int] = {}
    too_rare: dict[str, int] = {}  # tags left out of the vocabulary, with their counts
    if cls.multilabel:
        y_all, labels = multilabel_target(items, target, min_count=options.min_tag_count)
        too_rare = rare_tags(items, target, options.min_tag_count)
        has = y_all.any(axis=1)
        if (~has).sum():
            skipped["no matching tag"] = int((~has).sum())
        items, y = items[has], y_all[has]
    else:
        values = single_target(items, target)
        known = values.notna().to_numpy()
        if (~known).sum():
            skipped[f"no {target}"] = int((~known).sum())
        if not known.any():
            hint = ("ingest with --label-col naming the column that holds it" if target == "label"
                    else "check the target name (`curata info` lists what the items have)")
            raise TaskDataError(f"no item has a {target} to learn from ({len(items)} items, none with one): {hint}")
        items, y = items[known], values[known].astype(str).to_numpy()
        if options.min_per_class:
            counts = pd.Series(y).value_counts()
            rare = counts[counts < options.min_per_class]
            if len(rare):
                keep = ~np.isin(y, rare.index)
                skipped[f"class with < {options.min_per_class} items ({len(rare)} classes)"] = int((~keep).sum())
                items, y = items[keep], y[keep]
        labels = sorted(set(y))
    rows_total = len(items)
    pick = training_sample(y, feature_row_bytes(features), options.seed, options.folds)
    if pick is not None:
        items, y = items.iloc[pick], y[pick]
    feature_set, keep = load_features(workspace, features, items)
    skipped.update(feature_set.skipped)
    items, y = items[keep], y[keep]
    protocol = {
        "task": cls.task, "target": target, "features": feature_set.keys, "items_used": len(items),
        "training_data": {"mode": "all" if pick is None else "sample", "rows_used": len(items),
                          "rows_total": rows_total, "budget_bytes": memory_budget()},
        "skipped": skipped, "folds": options.folds, "seed": options.seed,
        **({"rare_tags": {"dropped": len(too_rare), "min_count": options.min_tag_count,
                          "items_with_them": int(sum(too_rare.values())),
                          "examples": sorted(too_rare, key=lambda t: (-too_rare[t], t))[:10]}} if too_rare else {}),
        "split": _protocol_name(options, cls.multilabel), "open_set": bool(getattr(task, "open_set", False)),
    }
    return task, feature_set.blocks, y, labels, items, protocol


def _build_task(cls: type[Task], features: list[str], options: TrainOptions) -> Task:
    """The task, told which feature blocks its models read (when they read blocks by name) and whether to
    answer open-set."""
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    if "features" in params:
        kwargs["features"] = features
    if options.open_set:
        if "open_set" not in params:
            raise TaskDataError(f"--open-set applies to classify and collection, not {cls.task}")
        kwargs["open_set"] = True
    task = cls(**kwargs)
    if options.model:
        task.model = options.model
    elif callable(chooser := getattr(task, "model_for", None)) and (model := chooser(features)):
        task.model = model  # a default that depends on the blocks (tags: ridge on pixels)
    return task


def _protocol_name(options: TrainOptions, multilabel: bool) -> str:
    if options.use_split:
        return "held-out test (split column)"
    if options.holdout:
        return f"held-out test (seeded split, {options.holdout:.0%} val, {options.holdout:.0%} test)"
    return f"{options.folds}-fold " + ("grouped by " + options.group if options.group
                                       else "stratified" if not multilabel else "shuffled")


TRAIN_SHARE = 0.5


def training_sample(y: np.ndarray, row_bytes: int, seed: int, folds: int) -> np.ndarray | None:
    """Rows to train on when the labelled items' feature blocks exceed the memory budget, else None (all).

    The sample's matrix fills half the budget (TRAIN_SHARE: scaling and fitting copy it), stratified by the
    target (a multi-label row by its rarest label) and seeded, each class keeping at least `folds` rows where
    it has them; cross-validation and the final fit then both run on it, so the reported metrics describe
    the model that is saved."""
    fits = rows_within_budget(row_bytes, share=TRAIN_SHARE)
    if len(y) <= fits:
        return None
    strata = rarest_label(y) if np.ndim(y) == 2 else y
    return stratified_sample(strata, fits, seed, min_per_stratum=folds)


def _folds(options: TrainOptions, y: np.ndarray, items: pd.DataFrame, multilabel: bool):
    groups = single_target(items, options.group).fillna("?").to_numpy() if options.group else None
    return make_folds(None if multilabel else y, n_splits=options.folds, seed=options.seed, groups=groups,
                      n_items=len(y))


def run(workspace: Workspace, options: TrainOptions, *, save: bool = True, reporter: Reporter = SILENT) -> TrainResult:
    """Evaluate (the chosen model, or all candidates with `compare`) by k-fold cross-validation or on a held-out
    split, then fit the chosen model, save the bundle (when `save`) and write the report."""
    with single_threaded_blas(), reporting(reporter):  # reporting: the fine-tuner's epochs show too
        return _run(workspace, options, save=save, reporter=reporter)


@dataclass
class _Evaluated:
    results: list[CVResult]  # what the report and table show as the scores (k-fold, or the held-out test)
    chosen: CVResult  # the chosen model's scores among them
    folds: list[Any]  # the folds those scores came from (the curation comparison reuses them)
    fit_rows: np.ndarray | None  # rows the saved model is fitted on (None: all)
    validation: list[CVResult] = field(default_factory=list)  # held-out: every candidate's val scores


def _candidates(task: Task, options: TrainOptions) -> list[str] | None:
    """Models to evaluate: all (None) with `compare`, else the one asked for or the task's default."""
    return None if options.compare else [getattr(task, "model", None) or next(iter(task.candidates()))]


def _k_fold(task: Task, options: TrainOptions, blocks: dict[str, np.ndarray], y: np.ndarray, labels: list[str],
            items: pd.DataFrame, reporter: Reporter) -> _Evaluated:
    folds = _folds(options, y, items, task.multilabel)
    models = _candidates(task, options)
    results = task.evaluate(blocks, y, folds, labels=labels, models=models, reporter=reporter)
    by_name = {r.name: r for r in results}
    chosen = by_name.get(options.model or (models[0] if models else _best(results))) or by_name[_best(results)]
    return _Evaluated(results, chosen, folds, None)


def _held_out(task: Task, options: TrainOptions, blocks: dict[str, np.ndarray], y: np.ndarray, labels: list[str],
              items: pd.DataFrame, protocol: dict[str, Any], reporter: Reporter) -> _Evaluated:
    """Candidates fitted on train and compared on val; the chosen one fitted on train + val and scored on test
    once (the score of the model that is saved, unless `final_fit` is "all")."""
    if options.group:
        raise TaskDataError("--group applies to k-fold cross-validation, not to a held-out split")
    split = held_out(y, split=items["split"].fillna("").to_numpy() if options.use_split else None,
                     fraction=options.holdout, seed=options.seed)
    models = _candidates(task, options)
    validation = task.evaluate(blocks, y, [(split.train, split.val)], labels=labels, models=models,
                               reporter=reporter)
    chosen_name = options.model or (models[0] if models else _best(validation))
    fit_on = np.sort(np.concatenate([split.train, split.val]))
    test_fold = [(fit_on, split.test)]
    test = task.evaluate(blocks, y, test_fold, labels=labels, models=[chosen_name], reporter=reporter)[0]
    ids = items["id"].to_numpy()
    protocol.update({
        "split_sizes": split.sizes(), "val_from": split.val_from, "split_left_out": split.left_out,
        "scored": {"part": "test", "items": len(split.test), "model": chosen_name,
                   "fitted_on": "train+val", "ids": [str(i) for i in ids[split.test][:10_000]]},
        "validation": comparison_table(validation), "final_fit": options.final_fit,
    })
    fit_rows = None if options.final_fit == "all" else fit_on
    return _Evaluated([test], test, test_fold, fit_rows, validation)


def _run(workspace: Workspace, options: TrainOptions, *, save: bool, reporter: Reporter) -> TrainResult:
    from curata.evaluate.report import write_report

    if options.final_fit not in ("train+val", "all"):
        raise TaskDataError(f"unknown final fit '{options.final_fit}': use train+val or all")
    task, blocks, y, labels, items, protocol = prepare(workspace, options)
    if options.use_split or options.holdout:
        done = _held_out(task, options, blocks, y, labels, items, protocol, reporter)
    else:
        done = _k_fold(task, options, blocks, y, labels, items, reporter)
    curation = curation_summary(workspace, task, protocol["target"], blocks, y, labels, items, done.folds,
                                done.chosen, reporter=reporter)
    if curation is not None:
        protocol["curation"] = curation
    name = _slug(options.name or f"{protocol['task']}-{protocol['target']}")
    bundle_dir = None
    started = time.perf_counter()
    if save:
        task.model = done.chosen.name
        fit_blocks, fit_y = (blocks, y) if done.fit_rows is None else (take(blocks, done.fit_rows), y[done.fit_rows])
        if task.multilabel:
            task.fit(fit_blocks, fit_y, labels=labels)  # so suggestions and predictions carry tag names
        else:
            task.fit(fit_blocks, fit_y)
        if chosen := chosen_model(task.estimator_):  # what `auto` chose for the saved model, and why
            fitted = getattr(task.estimator_, "model_", None) if not hasattr(task.estimator_, "chosen_") \
                else task.estimator_
            protocol["auto"] = {"chosen": chosen, "validation_accuracy": getattr(fitted, "validation_scores_", {}),
                                "rule": "the simplest within one paired standard error of the best",
                                "standard_error_vs_best": getattr(fitted, "validation_margin_", {})}
        card = Card(task=protocol["task"], target=protocol["target"], labels=[str(v) for v in labels],
                    features=protocol["features"], model=task.model,
                    metrics={k: v for k, v in done.chosen.summary.items()},
                    training={"items": len(fit_y), "skipped": protocol["skipped"], "protocol": protocol["split"],
                              "training_data": protocol["training_data"],
                              **({"split_sizes": protocol["split_sizes"], "final_fit": options.final_fit,
                                  "scored_on": f"{protocol['scored']['items']} held-out test items"}
                                 if "scored" in protocol else {}),
                              **({"open_set": True} if protocol.get("open_set") else {}),
                              **({"auto": protocol["auto"]} if "auto" in protocol else {}),
                              **({"curation": curation} if curation is not None else {})},
                    params={"folds": options.folds, "seed": options.seed})
        bundle_dir = save_bundle(workspace.dir("models") / name, task, card,
                                 _fitted_extractors(workspace, protocol["features"]))
    protocol["fit_all_seconds"] = round(time.perf_counter() - started, 2)
    first = next((b for b in blocks.values() if b.dtype != object), None)  # not `image`: paths, no vectors
    embedding = (first, [str(v) for v in y]) if first is not None and not task.multilabel else None
    report = write_report(workspace.dir("reports") / name, f"curata {protocol['task']}: {protocol['target']}",
                          done.results, protocol=protocol, embedding=embedding,
                          importance=_importance(task, blocks, y), thresholds=_thresholds(task, labels))
    return TrainResult(name, done.results, bundle_dir, report, protocol, protocol["skipped"],
                       protocol["training_data"], curation, done.validation)


# Curation -------------------------------------------------------------------------------------------


def curation_summary(workspace: Workspace, task: Task, target: str, blocks: dict[str, np.ndarray], y: np.ndarray,
                     labels: list[str], items: pd.DataFrame, folds: list[Any], chosen: CVResult, *,
                     reporter: Reporter = SILENT) -> dict[str, Any] | None:
    """How many of the used items' target values a curator set, and what that did to the model.

    None when the target is one only the source sets (meta:<field>). Otherwise {"field", "curated_items" (used
    items whose label / tags a curator set), "changed_from_source" (of those, the ones whose target value
    differs from the source's), "no_source_value" (of those, the ones the source gave no value for the
    target), "comparison", "note"}. `comparison` (None when nothing is curated: no extra fit) is the chosen
    model cross-validated on the same folds twice, trained on the source's values and on the curated ones,
    both scored against the curated values: {"model", "scored_on", "source": {metric: mean, metric_std: std},
    "curated": {...}, "source_trained_items"}. Items without a source value are left out of the
    source-trained model's training folds (never out of its test folds)."""
    field_name = target_field(target)
    if field_name is None:
        return None
    source, curated = source_items(workspace, items, field_name)
    multilabel = np.ndim(y) == 2
    if multilabel:
        y_source = multilabel_rows(source, target, labels)
        has_source = y_source.any(axis=1)
        changed = _tag_sets(source, target) != _tag_sets(items, target)
    else:
        values = single_target(source, target)
        has_source = values.notna().to_numpy()
        y_source = np.where(has_source, values.astype(object).to_numpy(), None)
        changed = np.array([s is None or str(s) != str(v) for s, v in zip(y_source, y, strict=True)], bool)
    changed &= curated
    info: dict[str, Any] = {
        "field": field_name, "target": target, "curated_items": int(curated.sum()),
        "changed_from_source": int(changed.sum()), "no_source_value": int((curated & ~has_source).sum()),
        "comparison": None, "note": None,
    }
    what = "label" if field_name == "label" else "tags"
    if not curated.any():
        info["note"] = (f"no item used has a curated {what}: the model is trained on the source's values, "
                        "no source-vs-curated comparison")
        return info
    if multilabel:
        same = bool(has_source.all() and np.array_equal(y_source, y))
    else:
        same = bool(has_source.all() and all(str(s) == str(v) for s, v in zip(y_source, y, strict=True)))
    if same:
        # The curated values give the same training target as the source's: the two models are one.
        source_result = chosen
        info["note"] = "no curated value changes the training target: both models are the same one"
    else:
        try:
            source_result = _cross_validate_on_source(chosen.name, task.candidates()[chosen.name], blocks,
                                                      y_source, has_source, y, folds, labels, reporter)
        except ValueError as e:  # e.g. a training fold left with one class once the source's values are used
            info["note"] = f"the source-trained model could not be cross-validated: {e}"
            return info
    info["comparison"] = {"model": chosen.name, "scored_on": "curated values",
                          "source": _mean_metrics(source_result), "curated": _mean_metrics(chosen),
                          "source_trained_items": int(has_source.sum()), "items": len(y),
                          "extra_fit_seconds": 0.0 if same else round(source_result.fit_seconds, 2)}
    return info


def _tag_sets(items: pd.DataFrame, target: str) -> np.ndarray:
    prefix = target.partition(":")[2]
    prefix = f"{prefix}=" if prefix else ""
    return np.array([frozenset(t for t in (tags if tags is not None else []) if t.startswith(prefix))
                     for tags in items["tags"]], dtype=object)


def _mean_metrics(result: CVResult) -> dict[str, float]:
    row = comparison_table([result])[0]
    return {k: v for k, v in row.items() if k not in ("model", "fit_seconds")}


def _cross_validate_on_source(name: str, make_model: Any, blocks: dict[str, np.ndarray], y_source: np.ndarray,
                              has_source: np.ndarray, y_truth: np.ndarray, folds: list[Any], labels: list[str],
                              reporter: Reporter) -> CVResult:
    """The chosen model cross-validated on the same folds, trained on the source's values (rows without one
    left out of training) and scored against the curated ones."""
    with single_threaded_blas(), warnings.catch_warnings():
        # Trained on the source's values, a model may predict a class the curated truth of a fold lacks.
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        return cross_validate(f"{name} (source values)", make_model, blocks, y_truth, folds, labels=labels,
                              reporter=reporter, train_y=y_source, train_rows=has_source)


def curation_line(curation: dict[str, Any] | None) -> str | None:
    """One line for the console: how many target values were curated and, on the same folds, the primary
    accuracy of the model trained on the source's values vs on the curated ones. None when nothing is curated."""
    if not curation or not curation.get("curated_items"):
        return None
    n, changed = curation["curated_items"], curation["changed_from_source"]
    what = (("label" if n == 1 else "labels") if curation["target"] == "label"
            else f"{curation['target']} value{'' if n == 1 else 's'}")
    line = f"curated: {n} {what} ({changed} differ from the source)"
    comparison = curation.get("comparison")
    if comparison:
        metric = next(m for m in ("accuracy", "micro_f1") if m in comparison["curated"])
        line += (f"; same folds: source-trained {metric} {comparison['source'][metric]:.2f} → curated-trained "
                 f"{comparison['curated'][metric]:.2f} (scored on the curated values)")
    elif curation.get("note"):
        line += f"; {curation['note']}"
    return line


def _best(results: list[CVResult]) -> str:
    """The model with the best mean primary metric (macro-F1 or micro-F1 for tags)."""
    metric = "micro_f1" if results[0].multilabel else "macro_f1"
    return max(results, key=lambda r: r.summary[metric]["mean"]).name


def _importance(task: Task, blocks: dict[str, np.ndarray], y: np.ndarray) -> list[tuple[str, float, float]] | None:
    hook = getattr(task, "importance", None)
    return hook(blocks, y) if callable(hook) and hasattr(task, "estimator_") else None


def _thresholds(task: Task, labels: list[str]) -> dict[str, float] | None:
    values = getattr(getattr(task, "estimator_", None), "thresholds_", None)
    return None if values is None else {str(lab): float(t) for lab, t in zip(labels, values, strict=False)}


def _fitted_extractors(workspace: Workspace, keys: dict[str, str]) -> dict[str, Path]:
    """A bundle carries the fitted state of collection-dependent extractors (tf-idf vocabulary...), so
    it can compute its own features for new items without the training workspace."""
    folders = {name: workspace.root / "models" / "extractors" / store_dirname(key) for name, key in keys.items()}
    return {name: folder for name, folder in folders.items() if folder.is_dir()}


# Prediction -----------------------------------------------------------------------------------------


def bundle_extractors(card: Card, bundle_dir: Path) -> dict[str, Any]:
    """The bundle's feature extractors, checked against its card, with their fitted state loaded
    (build once and keep them, e.g. in a service: loading may start an ONNX or torch model)."""
    check_features(card)
    out = {}
    for name in card.features:
        extractor = make_extractor(name)
        if extractor.needs_fit:
            state = folder_view(bundle_dir) / "extractors" / name
            if not state.is_dir():
                raise BundleError(f"bundle {bundle_dir} lacks the fitted state of '{name}'")
            extractor.load(state)
        out[name] = extractor
    return out


def featurise(card: Card, bundle_dir: Path, images: list[np.ndarray], texts: list[str],
              extractors: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Compute a bundle's features for new inputs (images already loaded, texts aligned with them).
    Pass `extractors` (from `bundle_extractors`) to reuse loaded models across calls."""
    return extract_blocks(extractors if extractors is not None else bundle_extractors(card, bundle_dir),
                          images, texts)


def extract_blocks(extractors: dict[str, Any], images: list[np.ndarray], texts: list[str]) -> dict[str, np.ndarray]:
    """One feature block per extractor: text extractors read `texts`, the others the decoded images."""
    return {name: extractor.transform(texts) if extractor.modality == "text"
            else extractor.transform([extractor.prepare(im) for im in images])
            for name, extractor in extractors.items()}


def predict_blocks(task: Task, card: Card, blocks: dict[str, np.ndarray], top: int = 3) -> list[dict[str, Any]]:
    """Predictions with their top scores (`top` <= 0: every class), one dict per row; an open-set model adds
    `open_set` (accepted, the best known class's probability and novelty distance against the thresholds of
    that class)."""
    pred = task.predict(blocks)
    try:
        proba = task.predict_proba(blocks)
    except (AttributeError, NotImplementedError):
        proba = None
    details = getattr(getattr(task, "estimator_", None), "open_details", None)
    open_set = details(blocks) if callable(details) else None
    classes = [str(c) for c in (task.classes_ if getattr(task, "classes_", None) is not None else card.labels)]
    rows = []
    for i in range(len(pred)):
        if task.multilabel:
            row = {"tags": [card.labels[j] for j in np.flatnonzero(pred[i])]}
            if proba is not None:
                order = np.argsort(-proba[i])[:top]
                row["scores"] = {card.labels[j]: round(float(proba[i][j]), 4) for j in order}
        else:
            row = {"prediction": str(pred[i])}
            if proba is not None:
                order = np.argsort(-proba[i])[:top] if top > 0 else np.argsort(-proba[i])
                row["scores"] = {classes[j]: round(float(proba[i][j]), 4) for j in order}
            if open_set is not None:
                row["open_set"] = _open_set_row(open_set, i)
        rows.append(row)
    return rows


def _open_set_row(details: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    def num(value: float) -> float | None:
        return round(float(value), 4) if np.isfinite(value) else None

    return {"accepted": bool(details["accepted"][i]), "best_class": str(details["predicted"][i]),
            "probability": num(details["probability"][i]),
            "probability_threshold": num(details["probability_threshold"][i]),
            "novelty_distance": num(details["distance"][i]),
            "distance_threshold": num(details["distance_threshold"][i])}


def predict_images(bundle_dir: Path, paths: list[Path | str], texts: list[str] | None = None, top: int = 3
                   ) -> list[dict[str, Any]]:
    """Predict for image files (or object URIs: `curata.objectstore`); an image that cannot be loaded gets an
    error entry, the rest go on."""
    task, card = load_bundle(bundle_dir)
    rows: list[dict[str, Any]] = [{"image": str(p)} for p in paths]
    good, images = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_image(path))
            good.append(i)
        except Exception as e:  # ImageError or OS errors: reported per item
            rows[i]["error"] = getattr(e, "reason", str(e))
    if good:
        given = texts or [""] * len(paths)
        hashes = [hashlib.sha256(objectstore.read_bytes(paths[i])).hexdigest() for i in good]
        blocks = _blocks_via_shared_cache(bundle_extractors(card, bundle_dir), images, [given[i] for i in good],
                                          hashes)
        for i, result in zip(good, predict_blocks(task, card, blocks, top), strict=True):
            rows[i].update(result)
    return rows


def _blocks_via_shared_cache(extractors: dict[str, Any], images: list[np.ndarray], texts: list[str],
                             hashes: list[str]) -> dict[str, np.ndarray]:
    """`extract_blocks`, except that image vectors the machine's shared feature cache holds (an image some
    workspace embedded already, by content hash) are read, not recomputed; what is computed is added."""
    from curata.features.shared_cache import give_shared, shared_store, take_shared

    blocks = {}
    for name, extractor in extractors.items():
        store = shared_store(extractor) if extractor.modality != "text" else None
        if store is None:
            blocks.update(extract_blocks({name: extractor}, images, texts))
            continue
        found, vectors = take_shared(store, hashes)
        known = dict(zip(found, vectors, strict=True))
        todo = [i for i, h in enumerate(hashes) if h not in known]
        if todo:
            computed = extract_blocks({name: extractor}, [images[i] for i in todo], [texts[i] for i in todo])[name]
            give_shared(store, [hashes[i] for i in todo], computed, [None] * len(todo))
            known.update({hashes[i]: row for i, row in zip(todo, computed, strict=True)})
        blocks[name] = np.stack([known[h] for h in hashes]).astype(np.float32)
    return blocks


def _row_errors(workspace: Workspace, features: list[str], items: pd.DataFrame) -> list[str]:
    """Why each of these items has no usable features: the first block's reason, named (read for these rows
    only, so it costs what failed, not the collection)."""
    reasons: list[str | None] = [None] * len(items)
    for name in features:
        _, errors = load_matrix(workspace, make_extractor(name), items)
        reasons = [r or (f"{name}: {e}" if e else None) for r, e in zip(reasons, errors, strict=True)]
    return [r or "features missing or failed" for r in reasons]


def predict_workspace(bundle_dir: Path, workspace: Workspace, top: int = 3) -> list[dict[str, Any]]:
    """Predict for every item of a workspace from its cached features."""
    task, card = load_bundle(bundle_dir)
    check_features(card)
    items = workspace.items()
    failed: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    # Over the memory budget, features are read and predicted a budget-sized chunk at a time.
    for start, blocks, keep in feature_chunks(workspace, list(card.features), items):
        ids = items["id"].iloc[start:start + len(keep)]
        if not keep.all():
            reasons = _row_errors(workspace, list(card.features), items.iloc[start:start + len(keep)][~keep])
            failed.extend({"id": i, "error": reason} for i, reason in zip(ids[~keep], reasons, strict=True))
        if keep.any():
            rows.extend({"id": i, **result} for i, result in zip(ids[keep], predict_blocks(task, card, blocks, top),
                                                                  strict=True))
    return failed + rows
