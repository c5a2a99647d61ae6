"""Which build of replica runs: "compiled" (mypyc extension modules) or "pure" (the .py sources).

`pip install` compiles the modules listed under [tool.replica] in pyproject.toml
when it can and records what it built in `_build.json` beside this file
(docs/compiled.md).  Importing replica keeps that build, unless
REPLICA_PURE_PYTHON=1 asks for the pure one, or a compiled module's source has
changed since it was compiled: then every compiled module loads from its .py
instead (with a warning), so an edit is never shadowed by a stale extension.
The compiled modules share native classes, so it is all of them or none.

`BUILD` is the build that runs, read from whether `replica.crdt.pn_counter`
loads as an extension module; `REASON` says why it is pure (None when compiled).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Literal

PURE_ENV = "REPLICA_PURE_PYTHON"
RECORD = Path(__file__).with_name("_build.json")
MARKER = "replica.crdt.pn_counter"  # a module that is compiled whenever the build is


class SourceFinder(importlib.abc.MetaPathFinder):
    """Finds each of `modules` as its .py source, ahead of an extension module beside it."""

    def __init__(self, modules: frozenset[str]) -> None:
        self.modules = modules

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules or not path:
            return None
        name = fullname.rpartition(".")[2]
        for entry in path:
            source = Path(entry) / f"{name}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def _package_dir() -> Path:
    return Path(__file__).parent


def _source_of(module: str) -> Path:
    return _package_dir().joinpath(*module.split(".")[1:]).with_suffix(".py")


def _stale(sources: dict[str, str]) -> list[str]:
    """The compiled modules whose source is not the one compiled."""
    stale = []
    for module, digest in sources.items():
        try:
            current = hashlib.sha256(_source_of(module).read_bytes()).hexdigest()
        except OSError:
            current = ""
        if current != digest:
            stale.append(module)
    return stale


def _choose() -> str | None:
    """Install the source finder when the pure modules must run; why they must, or None."""
    try:
        record = json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return "not compiled: no build record (a source tree that was never built)"
    if record.get("build") != "compiled":
        return f"installed pure: {record.get('reason')}"
    sources: dict[str, str] = record.get("sources", {})
    if os.environ.get(PURE_ENV) == "1":
        reason = f"{PURE_ENV}=1"
    elif stale := _stale(sources):
        reason = f"stale compiled modules, their source changed since: {', '.join(stale)}"
        warnings.warn(f"replica runs its pure-Python modules: {reason}", stacklevel=2)
    else:
        return None
    sys.meta_path.insert(0, SourceFinder(frozenset(sources)))
    return reason


def _which() -> Literal["compiled", "pure"]:
    spec = importlib.util.find_spec(MARKER)
    compiled = spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
    return "compiled" if compiled else "pure"


_why_pure = _choose()
BUILD: Literal["compiled", "pure"] = _which()
REASON: str | None = None if BUILD == "compiled" else _why_pure or "not compiled"


def describe() -> str:
    """One line for a log or a table: the build and, when pure, why."""
    return BUILD if REASON is None else f"{BUILD} ({REASON})"
