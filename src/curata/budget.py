"""The memory budget: the largest feature matrix a stage may hold in memory at once.

`CURATA_MEMORY_BUDGET` sets it ("4G", "512M", "2.5GB", "1.5GiB", or plain bytes); the default is 4 GiB.
Stages compare `rows x dim x 4 bytes` (float32) with it: below it they load the matrix whole as before,
above it they stream (`curata.features.engine.iter_matrix`), sample (training), or refuse with
`MemoryBudgetError`, so a stage's memory follows the budget, not the size of the collection.

The budget bounds the matrices curata loads, not the process: models make working copies (scaled
features, cross-validation folds) on top, so set it to a fraction of the machine's memory (a third is
a safe rule).
"""

from __future__ import annotations

import os
import re

ENV = "CURATA_MEMORY_BUDGET"
DEFAULT_BUDGET = 4 * 1024**3
FLOAT_BYTES = 4  # feature matrices are float32

# Binary multiples throughout ("4G" and "4GB" both mean 4 GiB): what people mean when sizing memory.
_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


class MemoryBudgetError(ValueError):
    """A stage would load a matrix larger than the memory budget; the message says how large and what to do."""


def parse_size(text: str) -> int:
    """Bytes from "4G", "512M", "2.5GB", "1GiB", "1048576"; ValueError for anything else (or zero)."""
    match = _PATTERN.match(str(text))
    if not match:
        raise ValueError(f"cannot read the size {text!r}: use bytes or a number with K, M, G or T (e.g. 4G, 512M)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 1:
        raise ValueError(f"the size {text!r} is zero")
    return int(value)


def memory_budget() -> int:
    """The budget in bytes: `$CURATA_MEMORY_BUDGET`, else 4 GiB. Read on every call, so a test or a long
    process can change it."""
    raw = os.environ.get(ENV)
    if raw is None or not raw.strip():
        return DEFAULT_BUDGET
    try:
        return parse_size(raw)
    except ValueError as e:
        raise ValueError(f"{ENV}={raw!r}: {e}") from None


def matrix_bytes(rows: int, dim: int) -> int:
    """Bytes of a float32 matrix."""
    return int(rows) * int(dim) * FLOAT_BYTES


def rows_within_budget(bytes_per_row: int, share: float = 1.0) -> int:
    """How many rows of `bytes_per_row` fit in `share` of the budget (at least 1: a stage always progresses)."""
    if bytes_per_row <= 0:
        raise ValueError(f"bytes_per_row must be positive, got {bytes_per_row}")
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return max(1, int(memory_budget() * share) // int(bytes_per_row))


def format_bytes(n: int) -> str:
    """Human-readable binary size ("1.5 GiB")."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # unreachable; keeps type checkers content


def check_matrix_fits(rows: int, dim: int, what: str) -> None:
    """Raise `MemoryBudgetError` when a rows x dim float32 matrix would exceed the budget."""
    need, budget = matrix_bytes(rows, dim), memory_budget()
    if need > budget:
        raise MemoryBudgetError(
            f"{what}: {rows} rows x {dim} dims x 4 bytes = {format_bytes(need)} exceeds the memory budget of "
            f"{format_bytes(budget)}; raise {ENV} (e.g. {ENV}={_suggest(need)}) or use a stage that streams "
            "(cluster with k-means, train samples, index build encodes in chunks)")


def _suggest(need: int) -> str:
    gib = need / 1024**3
    return f"{int(gib) + 1}G" if gib >= 1 else f"{int(need / 1024**2) + 1}M"
