"""`curata features`: compute the items' features, locally or on Ray (cached by content hash)."""

from __future__ import annotations

from typing import Annotated

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
    print_notes,
)
from curata.progress import rich_reporter
from curata.workspace import Workspace, default_workspace

# object_palette: the object's colours (backdrop apart), which the service's item colours, facet and filter read
DEFAULT_EXTRACTORS = "color_stats,color_hist,palette,object_palette,effnet_lite0,minilm,tfidf"
TEXT_EXTRACTORS = ("minilm", "tfidf")  # left out of the defaults when no item has a text


@app.command("features")
@handle_errors
def features_cmd(
    workspace: WorkspaceOpt = default_workspace(),
    extractors: Annotated[str | None, typer.Option("--extractors", "-e", help="Comma-separated extractor names "
                                                   f"(see --list). Default: {DEFAULT_EXTRACTORS} (without the "
                                                   "text ones when no item has a text).")] = None,
    batch_size: Annotated[int, typer.Option(help="Items per model batch (memory is bounded by it).")] = 32,
    refit: Annotated[bool, typer.Option(help="Refit collection-dependent extractors (tf-idf, visual words, "
                                              "Word2Vec) and recompute them.")] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the available extractors and exit.")] = False,
    plugin_path: Annotated[str | None, typer.Option("--plugin-path", help="Local model of the plug-in extractors "
                                                    "named with -e (timm: a checkpoint file; open_clip, hf_clip_*, "
                                                    "hf_vision: a folder). Recorded in the workspace, so later "
                                                    "commands use the same model.")] = None,
    engine: EngineOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_cpus: RayCpusOpt = None,
    ray_actors: RayActorsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compute features for every item that does not have them yet (cached by content hash).

    With --engine ray the same extractors run in a pool of Ray actors; collection-dependent ones are
    fitted once here first, and the results land in the same feature store.
    """
    from contextlib import nullcontext

    from curata.features.engine import available_extractors, compute, make_extractor

    if engine not in ("local", "ray"):
        raise BadInput(f"unknown --engine '{engine}'; choose local or ray")
    if list_:
        names = available_extractors()
        emit_json(names) if as_json else console.print("\n".join(names))
        return
    ws = Workspace(workspace)
    if not ws.exists:
        raise BadInput(f"no collection in workspace {ws.root} (run `curata ingest` or `curata demo` first)")
    skipped_text = []
    if extractors is None:
        extractors = DEFAULT_EXTRACTORS
        if not ws.has_text():
            skipped_text = list(TEXT_EXTRACTORS)
    names = [n.strip() for n in extractors.split(",") if n.strip() and n.strip() not in skipped_text]
    plugins = {}
    if plugin_path is not None:
        from curata.features.plugins import PLUGIN_NAMES, use_plugin_paths

        plugins = {n: plugin_path for n in names if n in PLUGIN_NAMES}
        if not plugins:
            raise BadInput(f"--plugin-path is for the plug-in extractors ({', '.join(PLUGIN_NAMES)}); none is named "
                           "with -e")
        use_plugin_paths(plugins)
    built = [make_extractor(n) for n in names]  # fail on a typo before any work
    if batch_size < 1:
        raise BadInput("--batch-size must be at least 1")
    runs = []
    if engine == "ray":
        from curata.scale import compute_ray, ray_runtime

        # One runtime for every extractor, started only once one of them has work to do.
        runtime = ray_runtime(ray_address, ray_cpus, lazy=True)
    else:
        runtime = nullcontext()
    with rich_reporter(not quiet and not as_json) as reporter, runtime:
        for extractor in built:
            if engine == "ray":
                runs.append(compute_ray(extractor, ws, batch_size=batch_size, refit=refit, address=ray_address,
                                        num_cpus=ray_cpus, actors=ray_actors, reporter=reporter))
            else:
                runs.append(compute(extractor, ws, batch_size=batch_size, refit=refit, reporter=reporter))
    if plugins:  # recorded once the plug-in has worked, so later commands find it
        from curata.features.plugins import remember_plugin_paths

        remember_plugin_paths(ws.root, plugins)
    if as_json:
        emit_json([r.to_dict() for r in runs])
        return
    table = Table(title=f"features in {escape(str(ws.root))}")
    for column in ("extractor", "items", "cached", "shared", "computed", "errors", "seconds", "items/s"):
        table.add_column(column, justify="left" if column == "extractor" else "right")
    for r in runs:
        table.add_row(escape(r.extractor), str(r.items), str(r.cached), str(r.shared), str(r.computed),
                      f"[red]{r.errors}[/]" if r.errors else "0", f"{r.seconds:.1f}",
                      f"{r.per_second:.0f}" if r.computed else "-")
    console.print(table)
    print_notes([note for r in runs for note in r.notes]
                + ([f"no item has a text: {', '.join(skipped_text)} not computed (name them with -e to force)"]
                   if skipped_text else []))
