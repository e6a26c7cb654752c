"""`curata train`, `evaluate`, `predict`: the supervised tasks (thin wrappers over `curata.tasks.runner`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from curata.clibase import (
    BadInput,
    EngineOpt,
    JsonOpt,
    QuietOpt,
    RayActorsOpt,
    RayAddressOpt,
    RayCpusOpt,
    WorkspaceOpt,
    app,
    console,
    emit_json,
    handle_errors,
)
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace

TaskArg = Annotated[str, typer.Argument(help="Task: classify (any single label, closed-set), colour, tags, "
                                        "collection (alias algorithm) or category.")]
FeaturesOpt = Annotated[str | None, typer.Option("--features", help="Comma-separated feature names (default: "
                                                 "the task's; classify and collection choose among the computed "
                                                 "ones: an image block, pixels on pixel art, plus a text block for "
                                                 "classify). They must have been computed (`curata features`). "
                                                 "classify also takes `image`, the images themselves: it adds "
                                                 "'finetune' (EfficientNet-Lite0's last block trained on the "
                                                 "collection, minutes on CPU) to the candidates and to what "
                                                 "'auto' weighs.")]
TargetOpt = Annotated[str | None, typer.Option(help="What to predict: label, tag:<trait>, meta:<field>, or for the "
                                               "tags task tags / tags:<trait>. Default: the task's.")]
UseSplitOpt = Annotated[bool, typer.Option("--use-split", help="Held-out protocol from the items' split column: "
                                           "models compared on 'val' (fitted on 'train'; without val rows, 20% of "
                                           "train is held out), the chosen one fitted on train+val and scored once "
                                           "on 'test'.")]
HoldoutOpt = Annotated[float | None, typer.Option("--holdout", help="Held-out protocol on a seeded stratified split: "
                                                  "this fraction of the items for val and as much for test "
                                                  "(e.g. 0.2).")]
OpenSetOpt = Annotated[bool, typer.Option("--open-set", help="classify / collection: answer 'unknown' for items "
                                          "unlike every training class; coverage and accuracy on the answered "
                                          "items are reported beside accuracy.")]
FoldsOpt = Annotated[int, typer.Option(help="Cross-validation folds (k-fold protocol).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of the folds or split, and of the models.")]
GroupOpt = Annotated[str | None, typer.Option(help="Target spec whose value groups items, so a group never "
                                              "straddles train and test in k-fold (e.g. meta:family).")]
MinPerClassOpt = Annotated[int | None, typer.Option(help="Drop classes with fewer items (reported).")]
SourceOpt = Annotated[str | None, typer.Option(help="Only items of this source or collection.")]


def _train_options(task: str, features: str | None, target: str | None, model: str | None, compare: bool,
                   folds: int, seed: int, use_split: bool, holdout: float | None, group: str | None,
                   min_per_class: int | None, source: str | None, name: str | None, open_set: bool,
                   final_fit: str = "train+val") -> Any:
    from curata.tasks.runner import TrainOptions

    if use_split and holdout is not None:
        raise BadInput("--use-split and --holdout are two ways to hold out a test part: give one")
    if holdout is not None and not 0 < holdout < 0.5:
        raise BadInput(f"--holdout must be between 0 and 0.5 (the val share, and as much for test), got {holdout}")
    held_out = use_split or holdout is not None
    if folds < 2 and not held_out:
        raise BadInput("--folds must be at least 2")
    if group and held_out:
        raise BadInput("--group applies to k-fold cross-validation, not to --use-split / --holdout")
    if final_fit not in ("train+val", "all"):
        raise BadInput(f"--final-fit must be train+val or all, got {final_fit!r}")
    return TrainOptions(task=task, features=[f.strip() for f in features.split(",")] if features else None,
                        target=target, model=model, compare=compare, folds=folds, seed=seed, use_split=use_split,
                        holdout=holdout, final_fit=final_fit, open_set=open_set, group=group,
                        min_per_class=min_per_class, source=source, name=name)


def _scores_table(title: str, rows: list[dict[str, Any]], spread: bool) -> Table:
    metrics = [k for k in rows[0] if k not in ("model", "fit_seconds") and not k.endswith("_std")]
    table = Table(title=title)
    table.add_column("model")
    for m in metrics:
        table.add_column(m.replace("_", " "), justify="right")
    table.add_column("fit s", justify="right")
    for row in rows:
        table.add_row(escape(row["model"]), *[f"{row[m]:.3f}" + (f" ± {row[m + '_std']:.3f}" if spread else "")
                                              for m in metrics], f"{row['fit_seconds']:.1f}")
    return table


def _print_results(result: Any) -> None:
    protocol = result.protocol
    console.print(f"[bold]{escape(protocol['task'])}[/] → {escape(protocol['target'])}: "
                  f"{protocol['items_used']} items, features {escape(', '.join(protocol['features']))}, "
                  f"{escape(protocol['split'])}, seed {protocol['seed']}"
                  + (", open-set" if protocol.get("open_set") else ""))
    for reason, count in result.skipped.items():
        console.print(f"  [yellow]skipped[/] {count} items: {escape(reason)}")
    if rare := protocol.get("rare_tags"):
        console.print(f"  [yellow]left out[/] {rare['dropped']} tags seen on fewer than {rare['min_count']} items "
                      f"(e.g. {escape(', '.join(rare['examples'][:5]))}): too rare to learn or to score")
    if result.training_data.get("mode") == "sample":
        d = result.training_data
        console.print(f"  [yellow]sampled[/] {d['rows_used']} of {d['rows_total']} items (stratified, seeded) to fit "
                      f"the memory budget of {d['budget_bytes'] / 2**30:.2f} GiB; raise CURATA_MEMORY_BUDGET to train "
                      "on all")
    if scored := protocol.get("scored"):
        sizes = protocol["split_sizes"]
        console.print(f"  split: {sizes['train']} train, {sizes['val']} val ({escape(protocol['val_from'])}), "
                      f"{sizes['test']} test" + (f"; {protocol['split_left_out']} items with no split value left out"
                                                 if protocol.get("split_left_out") else ""))
        console.print(_scores_table(f"validation: models fitted on train, scored on {sizes['val']} val items",
                                    protocol["validation"], spread=False))
        console.print(_scores_table(f"held-out test: {scored['model']} fitted on train+val, scored once on "
                                    f"{scored['items']} test items", result.table(), spread=False))
        if protocol.get("final_fit") == "all":
            console.print("  the saved model is refitted on every item, test included (--final-fit all): the test "
                          "score above is of the model before that refit")
    else:
        console.print(_scores_table(f"cross-validation: mean ± std over {protocol['folds']} folds",
                                    result.table(), spread=True))
    for r in [*result.validation, *result.results]:
        if r.extra.get("chosen"):  # `auto` picks a model inside every fit: say which
            console.print(f"  {escape(r.name)} chose: {escape(', '.join(c or '-' for c in r.extra['chosen']))}"
                          + (" (one per fold)" if len(r.extra["chosen"]) > 1 else ""))
    if auto := protocol.get("auto"):
        console.print(f"  the saved model: {escape(auto['chosen'])} (validation accuracy "
                      + ", ".join(f"{escape(k)} {v:.3f}" for k, v in auto["validation_accuracy"].items())
                      + "; the simplest within one paired standard error of the best is kept)")
    if result.bundle:
        console.print(f"bundle: {escape(str(result.bundle))}")
    console.print(f"report: {escape(str(result.report['html']))}")


@app.command("train")
@handle_errors
def train_cmd(
    task: TaskArg,
    workspace: WorkspaceOpt = default_workspace(),
    features: FeaturesOpt = None,
    target: TargetOpt = None,
    model: Annotated[str | None, typer.Option(help="Candidate model to train (default: the task's; classify's "
                                              "'auto' picks one by validation inside each fit; classify's "
                                              "'finetune' reads the images themselves).")] = None,
    compare: Annotated[bool, typer.Option(help="Evaluate every candidate and keep the best (on val with a "
                                          "held-out split).")] = False,
    folds: FoldsOpt = 5,
    seed: SeedOpt = 0,
    use_split: UseSplitOpt = False,
    holdout: HoldoutOpt = None,
    final_fit: Annotated[str, typer.Option("--final-fit", help="Held-out protocol: fit the saved model on "
                                           "train+val (test stays unseen, its score is the saved model's) or "
                                           "on all items.")] = "train+val",
    open_set: OpenSetOpt = False,
    group: GroupOpt = None,
    min_per_class: MinPerClassOpt = None,
    source: SourceOpt = None,
    name: Annotated[str | None, typer.Option(help="Bundle name (default: <task>-<target>).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a task (k-fold, or a held-out test with --use-split / --holdout), fit the chosen model and save
    the bundle in models/ with its card and an HTML report in reports/."""
    from curata.tasks.runner import run

    options = _train_options(task, features, target, model, compare, folds, seed, use_split, holdout, group,
                             min_per_class, source, name, open_set, final_fit)
    with rich_reporter(not quiet and not as_json) as reporter:
        result = run(Workspace(workspace), options, save=True, reporter=reporter)
    if as_json:
        emit_json({"name": result.name, "bundle": result.bundle, "report": result.report,
                   "protocol": result.protocol, "table": result.table()})
    else:
        _print_results(result)
        from curata.tasks.runner import curation_line

        if line := curation_line(result.curation):
            console.print(escape(line))


@app.command("evaluate")
@handle_errors
def evaluate_cmd(
    task: TaskArg,
    workspace: WorkspaceOpt = default_workspace(),
    features: FeaturesOpt = None,
    target: TargetOpt = None,
    model: Annotated[str | None, typer.Option(help="Evaluate only this candidate (default: all).")] = None,
    folds: FoldsOpt = 5,
    seed: SeedOpt = 0,
    use_split: UseSplitOpt = False,
    holdout: HoldoutOpt = None,
    open_set: OpenSetOpt = False,
    group: GroupOpt = None,
    min_per_class: MinPerClassOpt = None,
    source: SourceOpt = None,
    name: Annotated[str | None, typer.Option(help="Report name (default: <task>-<target>).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare the task's candidate models under one protocol (k-fold, or chosen on val and scored once on a
    held-out test); writes report.json and a self-contained report.html (confusion matrix, per-class scores,
    feature importance, 2-D map). `evaluate colour --model zero_label` scores the zero-label colour namer
    (nothing trained: it names each image's object) against the colour target instead."""
    from curata.tasks.runner import run

    if task in ("colour", "color") and model in ZERO_LABEL:
        _evaluate_namer(Workspace(workspace), target or "tag:color", model, as_json, quiet)
        return

    options = _train_options(task, features, target, model, model is None, folds, seed, use_split, holdout, group,
                             min_per_class, source, name, open_set)
    with rich_reporter(not quiet and not as_json) as reporter:
        result = run(Workspace(workspace), options, save=False, reporter=reporter)
    if as_json:
        emit_json({"name": result.name, "report": result.report, "protocol": result.protocol,
                   "table": result.table()})
    else:
        _print_results(result)


ZERO_LABEL = {"zero_label": "foreground", "zero_label_whole_image": "whole_image"}


def _evaluate_namer(ws: Workspace, target: str, model: str, as_json: bool, quiet: bool) -> None:
    from curata.evaluate.colour_names import score_namer

    if not ws.exists:
        raise BadInput(f"no collection in workspace {ws.root} (run `curata ingest` first)")
    with rich_reporter(not quiet and not as_json) as reporter:
        scored = score_namer(ws, target, namer=ZERO_LABEL[model], reporter=reporter)  # type: ignore[arg-type]
    if not scored["usable"]:
        raise BadInput(f"no item has a {target} that is one of the basic colour names ({scored['items']} items); "
                       "name the colour column with --target (label, tag:<trait>, meta:<field>)")
    if as_json:
        emit_json(scored)
        return
    console.print(f"[bold]zero-label colour namer[/] ({scored['namer']}) → {escape(target)}: {scored['usable']} items "
                  f"scored, {scored['unusable']} without a basic colour, {scored['unreadable']} unreadable")
    console.print(f"  top-1 accuracy {scored['accuracy']:.3f}, top-2 {scored['top2_accuracy']:.3f}; "
                  f"white named for {scored['white_over_non_white']} items that are not white")
    table = Table(title="per colour")
    for column in ("colour", "items", "right", "accuracy", "named instead (most often)"):
        table.add_column(column, justify="left" if column in ("colour", "named instead (most often)") else "right")
    for colour, row in scored["per_class"].items():
        wrong = {k: v for k, v in scored["confusion"][colour].items() if k != colour}
        table.add_row(escape(colour), str(row["n"]), str(row["correct"]), f"{row['accuracy']:.3f}",
                      escape(max(wrong, key=wrong.get) if wrong else "-"))
    console.print(table)


@app.command("predict")
@handle_errors
def predict_cmd(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder (models/<name>) or a bundle name in the "
                                           "workspace.")],
    images: Annotated[list[str] | None, typer.Argument(help="Image files (or s3:// object URIs) to predict. With "
                                                       "--engine ray also folders of images, a Parquet file "
                                                       "(or folder of Parquet shards) with an image column, or "
                                                       "a text file listing one image path per line.")] = None,
    workspace: WorkspaceOpt = default_workspace(),
    text: Annotated[str | None, typer.Option(help="Text for every image, for bundles with text features.")] = None,
    all_items: Annotated[bool, typer.Option("--all", help="Predict every item of the workspace (cached "
                                            "features; with --engine ray, computed from the items' images "
                                            "and texts).")] = False,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_cpus: RayCpusOpt = None,
    ray_actors: RayActorsOpt = None,
    batch_size: Annotated[int, typer.Option(help="Images per model batch with --engine ray.")] = 32,
    output: Annotated[str | None, typer.Option(help="With --engine ray: a new folder (or s3://… prefix) to write "
                                               "the predictions to as Parquet parts (id, image, prediction, "
                                               "tags, scores, error) instead of printing them.")] = None,
    top: Annotated[int, typer.Option(help="Scores of this many classes per item (0: every class).")] = 3,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Predict with a trained bundle, for image files or for every workspace item. An open-set model's rows
    (with --json) also say whether the answer was accepted, and its probability and novelty distance against
    the thresholds of the class it chose."""
    from curata.objectstore import is_object_uri
    from curata.tasks.runner import predict_images, predict_workspace

    # Object URIs stay strings (a Path would fold "s3://" into "s3:/"); everything else is a path.
    inputs: list[Path | str] = [i if is_object_uri(i) else Path(i) for i in images or []]

    if engine not in ("local", "ray"):
        raise BadInput(f"unknown --engine '{engine}'; choose local or ray")
    if output is not None and engine != "ray":
        raise BadInput("--output needs --engine ray")
    ws = Workspace(workspace)
    bundle_dir = bundle if bundle.is_dir() else ws.root / "models" / str(bundle)
    if not bundle_dir.is_dir():
        raise BadInput(f"no bundle at {bundle} (nor {bundle_dir})")
    if not images and not all_items:
        raise BadInput("give image files, or --all to predict every workspace item")
    if engine == "ray":
        from curata.scale import predict_ray

        if batch_size < 1:
            raise BadInput("--batch-size must be at least 1")
        if not images and not ws.exists:
            raise BadInput(f"no collection in workspace {ws.root}")
        source = (inputs[0] if len(inputs) == 1 and isinstance(inputs[0], Path) else inputs) if inputs else ws
        with rich_reporter(not quiet and not as_json) as reporter:
            result = predict_ray(bundle_dir, source, texts=text, output=output, batch_size=batch_size,
                                 address=ray_address, num_cpus=ray_cpus, actors=ray_actors, reporter=reporter)
        if output is not None:
            if as_json:
                emit_json(result.to_dict())
            else:
                console.print(f"{result.items} items, {result.predicted} predicted, {result.errors} errors in "
                              f"{result.seconds:.1f} s; predictions in {escape(str(output))}")
            return
        rows = result.rows
    elif images:
        rows = predict_images(bundle_dir, inputs, [text or ""] * len(inputs), top=top)
    else:
        rows = predict_workspace(bundle_dir, ws, top=top)
    if as_json:
        emit_json(rows)
        return
    table = Table(title=f"predictions of {escape(bundle_dir.name)}")
    table.add_column("item")
    table.add_column("prediction")
    table.add_column("scores")
    for row in rows:
        what = row.get("prediction") or ", ".join(row.get("tags", [])) or ""
        scores = ", ".join(f"{k} {v:.2f}" for k, v in row.get("scores", {}).items())
        table.add_row(escape(str(row.get("id") or row.get("image"))),
                      f"[red]{escape(row['error'])}[/]" if "error" in row else escape(what), escape(scores))
    console.print(table)
