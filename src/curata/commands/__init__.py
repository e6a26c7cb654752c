"""Command modules, one per feature area (ingest, features, tasks, search, serve, ...).

Each module registers its commands on `curata.clibase.app` when imported; importing this package
imports every module in it, so a new area is one new file. `curata --help` lists the commands in the
order they were registered: the main path through a collection first, then the rest alphabetically.
"""

import importlib
import pkgutil

FIRST = ("ingest", "features", "tasks", "unsupervised", "describe", "search", "curate", "export", "serve", "demo")

for _name in [*FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in FIRST)]:
    importlib.import_module(f"{__name__}.{_name}")
