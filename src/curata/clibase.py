"""What every `curata` command shares: the Typer app, common options, error handling, JSON output.

Commands live in `curata.cli` (the core ones) and in `curata.commands.*` (one module per feature
area); both register on `app` here, so adding a command never means editing a shared file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from curata.imageio import ImageError
from curata.ingest.records import SourceError

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2

app = typer.Typer(
    name="curata",
    help="Classify, describe and search visual collections from their images and their text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)

WorkspaceOpt = Annotated[
    Path,
    typer.Option("--workspace", "-w", envvar="CURATA_WORKSPACE",
                 help="Workspace folder holding the collection, features, models, index and reports."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


class BadInput(Exception):
    """A user mistake: reported in one line, exit code 2."""


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Map exceptions to exit codes: bad input -> 2 with a one-line message, bugs -> 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except (BadInput, SourceError, ImageError, FileNotFoundError, ValueError) as e:
            # escape(): paths and reasons may hold [brackets] that Rich would read as markup.
            # soft_wrap: one line whatever the terminal width, for scripts that read stderr.
            err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as e:  # an internal error: say so, keep the trace for bug reports
            err.print_exception(show_locals=False)
            err.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(EXIT_INTERNAL) from None

    return wrapper


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def print_notes(notes: list[Any]) -> None:
    """Notes a command wants the user to see (skipped items, fallbacks), one yellow line each."""
    for note in notes:
        console.print(f"[yellow]note[/] {escape(str(note))}")
