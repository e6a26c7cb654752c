"""Command modules, one per feature area (search, serve, collect, ...).

Each module registers its commands on `curata.clibase.app` when imported; importing this package
imports every module in it, so a new area is one new file.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
