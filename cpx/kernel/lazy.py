"""Packages that re-export their modules' names without importing them up front (PEP 562).

``cpx.data`` re-exports the dataset cache (torch) beside the competition profile, and
``cpx.sweep`` the Optuna runner beside the sweep spec; importing either package, or one light
module in it, should not import the heavy ones. A package lists what it re-exports and gets
the module-level ``__getattr__`` and ``__dir__`` that import a module when one of its names is
first used::

    __getattr__, __dir__ = lazy_exports(__name__, {"checks": ("DataReport", "check_dataset")})
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], Any],
                                                                             Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``; ``exports`` maps each of its modules (the
    name relative to the package) to the names it re-exports."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        setattr(sys.modules[package], name, value)  # the next lookup finds it without us
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
