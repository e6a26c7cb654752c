"""What every `curata` command shares: the Typer app, common options, error handling, JSON output.

Commands live in `curata.commands.*` (one module per feature area) and register on `app` here, so
adding a command never means editing a shared file; `curata.cli` only assembles the app.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from curata.features.base import PluginUnavailable
from curata.imageio import ImageError
from curata.ingest.records import SourceError
from curata.storage import StorageError

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
    str,  # not a Path: that would fold `s3://bucket/x` into `s3:/bucket/x`
    typer.Option("--workspace", "-w", envvar="CURATA_WORKSPACE",
                 help="Workspace folder holding the collection, features, models, index and reports, or a "
                      "prefix on object storage (s3://bucket/prefix, gs://…, az://…; credentials and endpoint "
                      "from the environment)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout instead of tables.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]

# The scale-out options `features` and `predict` share.
EngineOpt = Annotated[str, typer.Option(help="local (threads in this process) or ray (Ray Data actors on a local "
                                        "Ray runtime, or on the cluster at --ray-address).")]
RayAddressOpt = Annotated[str | None, typer.Option(help="Ray cluster to run on with --engine ray (e.g. auto, "
                                                   "ray://head:10001). Default: start a local runtime.")]
RayCpusOpt = Annotated[int | None, typer.Option(help="CPUs of the local Ray runtime (default: all cores this "
                                                "process may use).")]
RayActorsOpt = Annotated[int | None, typer.Option(help="Model replicas with --engine ray (default: one per CPU).")]


class BadInput(Exception):
    """A user mistake: reported in one line, exit code 2."""


# A full or read-only disk is the machine's state, not a bug: one line saying what to do, exit code 2.
DISK_ERRORS = {
    errno.ENOSPC: ("no space left on device", "free space and rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free space (or raise the quota) and rerun"),
    errno.EROFS: ("read-only file system", "use a writable workspace and rerun"),
}


def disk_error_message(error: BaseException | None) -> str | None:
    """The one-line message for a full / read-only disk (the error or what caused it), or None. Some
    writers (pyarrow) raise without an errno, so their message is matched too."""
    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, OSError):
            code = error.errno if error.errno in DISK_ERRORS else next(
                (c for c in DISK_ERRORS if os.strerror(c).lower() in str(error).lower()), None)
            if code is not None:
                what, todo = DISK_ERRORS[code]
                file = error.filename or getattr(error, "written_file", None)
                where = f" while writing {file}" if file else ""
                return f"{what}{where}; {todo}"
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


PACKAGE_DIR = Path(__file__).resolve().parent


def raised_by_curata(error: BaseException) -> bool:
    """Whether `error` was raised by curata's own code (its last traceback frame is in the package). Our
    `raise ValueError(...)` messages are written for the user, about their input; a ValueError from inside
    NumPy, scikit-learn or pandas means curata handed a library something it should not have: a bug."""
    tb = error.__traceback__
    if tb is None:
        return True
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Map exceptions to exit codes: bad input -> 2 with a one-line message, bugs -> 1 with the trace. A
    ValueError is bad input when curata raised it (a message about the input), a bug when a library did."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except typer.Exit:
            raise
        except ValueError as e:
            # Undecodable JSON or text is the input's fault wherever the decoder sits.
            if not raised_by_curata(e) and not isinstance(e, (SourceError, ImageError, json.JSONDecodeError,
                                                              UnicodeError)):
                _internal(e)
            err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except (BadInput, SourceError, ImageError, PluginUnavailable, FileNotFoundError, StorageError) as e:
            # escape(): paths and reasons may hold [brackets] that Rich would read as markup.
            # soft_wrap: one line whatever the terminal width, for scripts that read stderr.
            err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except Exception as e:  # an internal error: say so, keep the trace for bug reports
            message = disk_error_message(e)
            if message is not None:
                err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
                raise typer.Exit(EXIT_BAD_INPUT) from None
            _internal(e)

    return wrapper


def _internal(e: BaseException) -> NoReturn:
    """An internal error: say so, keep the trace for bug reports, exit 1."""
    err.print_exception(show_locals=False)
    err.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))}", soft_wrap=True)
    raise typer.Exit(EXIT_INTERNAL) from None


def emit_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def print_notes(notes: list[Any]) -> None:
    """Notes a command wants the user to see (skipped items, fallbacks), one yellow line each."""
    for note in notes:
        console.print(f"[yellow]note[/] {escape(str(note))}")
