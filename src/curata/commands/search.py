"""Cross-modal search commands: `curata joint train|evaluate`, `curata index build`, `curata search`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from curata.clibase import (
    BadInput,
    JsonOpt,
    QuietOpt,
    WorkspaceOpt,
    app,
    console,
    emit_json,
    err,
    handle_errors,
    print_notes,
)
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace

joint_app = typer.Typer(help="Train and evaluate the joint text-image space used for search.", no_args_is_help=True)
index_app = typer.Typer(help="Build and update the vector index that `curata search` queries.", no_args_is_help=True)
app.add_typer(joint_app, name="joint")
app.add_typer(index_app, name="index")

ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="Joint-space bundle name (default: the newest one; without one, zeroshot), or zeroshot "
                          "(no training: ImageNet class names + colour names in MiniLM's space), or clip:<local "
                          "CLIP folder>, or open_clip:<architecture>:<checkpoint file>.")]


@joint_app.command("train")
@handle_errors
def joint_train_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    features: Annotated[str | None, typer.Option(help="Frozen encoders as IMAGE,TEXT extractor names (their cached "
                                                      "features are the heads' inputs); IMAGE may join names with "
                                                      "'+' (effnet_lite0+pixels_onehot: each block L2-normalised, "
                                                      "concatenated). Default: "
                                                      "effnet_lite0,minilm, or on pixel art whichever of "
                                                      "effnet_lite0, pixels_onehot and effnet_lite0+pixels_onehot "
                                                      "validates best.")] = None,
    dim: Annotated[int, typer.Option(help="Dimension of the shared space.")] = 256,
    hidden: Annotated[int | None, typer.Option(help="Hidden width of the 2-layer projection heads (0: linear). "
                                                    "Default: linear or 512, chosen by validation.")] = None,
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = 40,
    batch_size: Annotated[int, typer.Option(help="Image-caption pairs per batch (the in-batch negatives).")] = 128,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    mask_p: Annotated[float | None, typer.Option(help="Attribute masking: probability each attribute is dropped from "
                                                      "an attribute caption (0 disables). Default: 0 or 0.3, chosen "
                                                      "by validation.")] = None,
    batching: Annotated[str | None, typer.Option(help="random, or collection (each batch within one collection: hard "
                                                      "negatives). Default: chosen by validation.")] = None,
    budget_s: Annotated[float, typer.Option(help="Time budget of the selection of the defaults, in seconds.")] = 120.0,
    select_epochs: Annotated[int, typer.Option(help="Most epochs per candidate during selection.")] = 15,
    pretrain_demo: Annotated[int, typer.Option(help="Also train on this many drawings of the built-in generator "
                                                    "(rendered in memory, with their trait captions; never "
                                                    "ingested).")] = 0,
    general: Annotated[bool, typer.Option("--general", help="A general space: every captioned collection of the "
                                                            "workspace plus 2000 demo drawings (unless "
                                                            "--pretrain-demo says otherwise), named 'general' "
                                                            "unless --name is given; check it on unseen "
                                                            "collections with --holdout.")] = False,
    no_select: Annotated[bool, typer.Option("--no-select", help="Choose nothing by validation: linear heads over "
                                                                "effnet_lite0, no masking, random batches, unless "
                                                                "given.")] = False,
    variants: Annotated[int, typer.Option(help="Masked caption variants precomputed per item.")] = 4,
    val_fraction: Annotated[float, typer.Option(help="Share of images held out for validation / early "
                                                     "stopping.")] = 0.2,
    patience: Annotated[int, typer.Option(help="Epochs without a better val recall@10 before stopping.")] = 6,
    captions: Annotated[str, typer.Option(help="Caption source: auto (NFT attributes, else captions, else text), "
                                               "attributes (also from tags + label), text.")] = "auto",
    holdout: Annotated[list[str] | None, typer.Option(help="Collection kept out of training, for the unseen-"
                                                           "collection evaluation (repeatable).")] = None,
    max_items: Annotated[int | None, typer.Option(help="Train on a random subsample of this many items.")] = None,
    seed: Annotated[int, typer.Option(help="Seed (split, initialisation, batches, masks).")] = 0,
    name: Annotated[str, typer.Option(help="Bundle name (models/<name>/).")] = "joint",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Learn a joint text-image space on the collection (frozen encoders, trainable heads, InfoNCE)."""
    from curata.search.joint import JointOptions, train_joint

    parts = [p.strip() for p in (features or "effnet_lite0,minilm").split(",") if p.strip()]
    if len(parts) != 2:
        raise BadInput(f"--features takes IMAGE,TEXT (two extractor names; IMAGE may join several with '+'), "
                       f"got {features!r}")
    # What the user gave is fixed; the rest is chosen by validation (unless --no-select).
    given = {"features": features, "head": hidden, "masking": mask_p, "batching": batching}
    select = () if no_select else tuple(k for k, v in given.items() if v is None)
    options = JointOptions(image_features=parts[0], text_features=parts[1], dim=dim,
                           hidden=512 if hidden is None and "head" in select else (hidden or 0),
                           epochs=epochs, batch_size=batch_size, lr=lr,
                           mask_p=0.3 if mask_p is None and "masking" in select else (mask_p or 0.0),
                           variants=variants, val_fraction=val_fraction, patience=patience, captions=captions,
                           holdout=tuple(holdout or ()), max_items=max_items, seed=seed, name=name,
                           batching=batching or "random", select=select, budget_s=budget_s,
                           select_epochs=select_epochs,
                           pretrain_demo=pretrain_demo or (2000 if general else 0))
    if general and name == "joint":
        options.name = "general"
    show = not quiet and not as_json

    def on_candidate(r: dict[str, Any]) -> None:
        if show:
            c = r["config"]
            what = (f"{c['image_features']}, hidden {c['hidden']}, mask-p {c['mask_p']:g}, {c['batching']} batches")
            if "skipped" in r:
                err.print(f"candidate {what}: skipped ({r['skipped']})")
            else:
                err.print(f"candidate {what}: val t2i R@1 {r['val'].get('t2i_r1', 0):.3f} "
                          f"R@10 {r['val'].get('t2i_r10', 0):.3f}, partial R@1 "
                          f"{r['val_partial'].get('any_r1', float('nan')):.3f}, score {r['score']:.3f}, "
                          f"{r['seconds']} s")

    def on_epoch(r: dict[str, Any]) -> None:
        if show:
            err.print(f"epoch {r['epoch']:>3}  loss {r['loss']}  val loss {r['val_loss']}  "
                      f"val t2i R@1 {r.get('val_t2i_r1', 0):.3f}  R@10 {r.get('val_t2i_r10', 0):.3f}  "
                      f"temperature {r['temperature']:.4f}")

    with rich_reporter(show) as reporter:
        summary = train_joint(Workspace(workspace), options, reporter=reporter, on_epoch=on_epoch,
                              on_candidate=on_candidate)
    summary.pop("space", None)
    if as_json:
        emit_json(summary)
        return
    t = summary["training"]
    held = f" / {t['holdout']} held out" if t["holdout"] else ""
    console.print(f"[bold]joint space {escape(summary['name'])}[/]: {t['train']} train / {t['val']} val items{held}, "
                  f"{t['epochs_run']} epochs "
                  f"(best {t['best_epoch']}), temperature {summary['temperature']:.4f}, {t['seconds']} s")
    table = Table(title="validation recall (text->image / image->text)")
    for column in ("model", "t2i@1", "t2i@5", "t2i@10", "i2t@1", "i2t@5", "i2t@10"):
        table.add_column(column)
    for label, m in (("untrained", summary["metrics"]["val_untrained"]), ("trained", summary["metrics"]["val"])):
        table.add_row(label, *[f"{m.get(f'{d}_r{k}', 0):.3f}" for d in ("t2i", "i2t") for k in (1, 5, 10)])
    console.print(table)
    print_selection(summary.get("selection"))
    console.print(f"saved: {escape(summary.get('path', ''))}; report: {escape(summary.get('report', ''))}")


def print_selection(selection: dict[str, Any] | None) -> None:
    """The candidates selection tried (val recall on full captions and partial queries) and the choice."""
    if not selection:
        return
    table = Table(title=f"settings chosen by validation ({', '.join(selection['searched'])}; "
                        f"{selection['seconds']} s, {selection['select_epochs']} epochs each)")
    for column in ("features", "hidden", "mask-p", "batches", "full R@1", "full R@10", "partial R@1",
                   "partial R@10", "score", "s", "chosen"):
        table.add_column(column)
    for r in selection["candidates"]:
        c, v, p = r["config"], r.get("val", {}), r.get("val_partial", {})
        cells = [f"{v[k]:.3f}" if k in v else "-" for k in ("t2i_r1", "t2i_r10")]
        cells += [f"{p[k]:.3f}" if k in p else "-" for k in ("any_r1", "any_r10")]
        table.add_row(escape(c["image_features"]), str(c["hidden"]), f"{c['mask_p']:g}", c["batching"], *cells,
                      f"{r['score']:.3f}" if "score" in r else escape(r.get("skipped", "")),
                      str(r.get("seconds", "-")), "*" if r.get("chosen") else "")
    console.print(table)


@joint_app.command("evaluate")
@handle_errors
def joint_evaluate_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    model: ModelOpt = None,
    subset: Annotated[str, typer.Option(help="Items: auto (val, plus held-out collections if any), val, holdout, "
                                             "all.")] = "auto",
    captions: Annotated[str | None, typer.Option(help="Caption source (default: the one the model was trained "
                                                      "with).")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """NFT1000-style retrieval evaluation: recall@1/5/10/20/50 text->image and image->text, per collection and
    pooled, and each collection's difficulty index (report in reports/retrieval-latest.json)."""
    from curata.search.evaluate import evaluate_retrieval, format_table

    with rich_reporter(not quiet and not as_json) as reporter:
        payload = evaluate_retrieval(Workspace(workspace), model, subset=subset, captions=captions,
                                     reporter=reporter)
    if as_json:
        emit_json(payload)
        return
    # The terminal table shows recall@1/5/10 (the JSON and the report hold every K).
    for title, header, rows in format_table(payload, ks=(1, 5, 10)):
        table = Table(title=f"{payload['model']['name']}: {title}" + ("" if "partial" in title else " items"))
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*[escape(c) for c in row])
        console.print(table)
    console.print(f"report: {escape(payload.get('report', ''))}")


@index_app.command("build")
@handle_errors
def index_build_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    model: ModelOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Create or update the search index of a model: only new or changed items are encoded, removed items leave."""
    from curata.search.searcher import build_index

    with rich_reporter(not quiet and not as_json) as reporter:
        summary = build_index(Workspace(workspace), model, reporter=reporter)
    if as_json:
        emit_json(summary)
        return
    console.print(f"[bold]index {escape(summary['model'])}[/]: {summary['total']} items "
                  f"(+{summary['added']} added, {summary['updated']} updated, -{summary['removed']} removed"
                  f"{', rebuilt' if summary['rebuilt'] else ''}) in {escape(summary['index'])}")
    print_notes(summary["notes"])


def _parse_filters(values: list[str] | None) -> dict[str, str]:
    filters: dict[str, str] = {}
    for value in values or []:
        field, sep, wanted = value.partition("=")
        if not sep or not field.strip() or not wanted.strip():
            raise BadInput(f"--filter {value!r}: expected FIELD=VALUE, e.g. collection=cryptopunks")
        filters[field.strip()] = wanted.strip()
    return filters


@app.command("search")
@handle_errors
def search_cmd(
    text: Annotated[str | None, typer.Option("--text", "-t", help="Find images matching this text.")] = None,
    image: Annotated[Path | None, typer.Option("--image", "-i", help="Find items that look like this image "
                                                                     "file.")] = None,
    item: Annotated[str | None, typer.Option("--item", help="Find items like this item id.")] = None,
    k: Annotated[int, typer.Option("-k", help="Number of hits.")] = 10,
    filters: Annotated[list[str] | None, typer.Option("--filter", help="FIELD=VALUE on collection, label or split "
                                                                       "(repeatable; all must hold).")] = None,
    model: ModelOpt = None,
    mode: Annotated[str | None, typer.Option("--mode", help="Text search: hybrid (traits named in the query + BM25 "
                                                            "+ joint space, fused; the default when the index has "
                                                            "its lexical part), joint, or lexical.")] = None,
    workspace: WorkspaceOpt = default_workspace(),
    as_json: JsonOpt = False,
) -> None:
    """Search the collection by text, by image or by item, in the model's joint space (build the index first);
    text queries also match tags and words (hybrid mode)."""
    from curata.search.searcher import Searcher

    given = [name for name, v in (("--text", text), ("--image", image), ("--item", item)) if v is not None]
    if len(given) != 1:
        raise BadInput("give exactly one of --text, --image, --item" + (f" (got {', '.join(given)})" if given else ""))
    if k < 1:
        raise BadInput(f"-k must be at least 1, got {k}")
    if mode is not None and mode not in ("hybrid", "joint", "lexical"):
        raise BadInput(f"--mode must be hybrid, joint or lexical, got {mode!r}")
    if mode is not None and text is None:
        raise BadInput("--mode applies to --text searches only")
    parsed = _parse_filters(filters)
    searcher = Searcher.open(Workspace(workspace), model)
    used = "joint"
    if text is not None:
        if mode == "lexical" and searcher.lexical is None:
            raise BadInput("this index has no lexical part (built before hybrid search); run `curata index build`")
        hits, query = searcher.by_text(text, k, parsed, mode=mode), f"text {text!r}"
        used = "joint" if searcher.lexical is None else (mode or searcher.default_mode)
    elif image is not None:
        hits, query = searcher.by_image(image, k, parsed), f"image {image}"
    else:
        hits, query = searcher.by_item(str(item), k, parsed), f"item {item}"
    if as_json:
        emit_json({"query": query, "model": searcher.encoder.name, "mode": used, "filters": parsed, "hits": hits,
                   "notes": searcher.notes})
        return
    fused = used != "joint"
    table = Table(title=f"{escape(query)} ({escape(searcher.encoder.name)}, {used})")
    for column in ("#", "score", "id", "collection", "label", *(["matched"] if fused else []), "text"):
        table.add_column(column)
    for rank, hit in enumerate(hits, 1):
        matched = [f"{t} (predicted)" if t in hit.get("predicted", []) else t for t in hit.get("matched", [])]
        table.add_row(str(rank), f"{hit['score']:.3f}", escape(hit["id"]), escape(hit["collection"] or ""),
                      escape(hit["label"] or ""), *([escape(", ".join(matched))] if fused else []),
                      escape((hit["text"] or "")[:80]))
    console.print(table)
    print_notes(searcher.notes)
