"""The `curata` command line: thin wrappers over library functions (no logic lives only here).

This module only assembles the app: every command lives in `curata.commands.*` (one module per feature
area) and registers itself on `curata.clibase.app` when imported.

Exit codes: 0 success, 2 bad input (unreadable source, missing column, bad option; with --strict
also any rejected item), 1 internal error.
"""

from __future__ import annotations

from typing import Annotated

import typer

import curata.commands  # noqa: F401 (registers each feature area's commands on the app)
from curata import __version__
from curata.clibase import app, console


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"curata {__version__}")
        raise typer.Exit()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
