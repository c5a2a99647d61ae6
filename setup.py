"""Build replica: the modules listed under [tool.replica] in pyproject.toml compiled with mypyc.

Everything else about the project is in pyproject.toml.  The compiled modules are
installed beside their .py sources, which stay the reference: whatever stops the
compile (no C compiler, no mypyc, a module mypyc refuses, REPLICA_PURE_BUILD=1)
leaves an install of the pure modules, and one line on stderr says so and why.
`_build.json` beside replica/__init__.py records which build was made and the
hash of each compiled source, so `replica.build` can tell a stale extension from
a current one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
GROUP = "replica._native"  # the shared library of every compiled module, inside the package
RECORD = "_build.json"
PURE_BUILD_ENV = "REPLICA_PURE_BUILD"
# A stand-in, so setuptools knows the project has extensions; BuildCompiled replaces it.
PLACEHOLDER = Extension(f"{GROUP}__mypyc", sources=[])


def compiled_sources() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return list(tomllib.load(file)["tool"]["replica"]["compiled"])


def module_name(source: str) -> str:
    return source.removesuffix(".py").replace("/", ".")


def source_hashes(sources: list[str]) -> dict[str, str]:
    return {module_name(s): hashlib.sha256((ROOT / s).read_bytes()).hexdigest() for s in sources}


def say_pure(reason: str) -> None:
    print(f"replica: installing the pure-Python modules, not compiled: {reason}", file=sys.stderr)


class BuildCompiled(build_ext):
    """Compiles the listed modules, or builds nothing and records why (never fails the install)."""

    def finalize_options(self) -> None:
        # mypyc type-checks the project to write its C: done here, when extensions are
        # really built, not each time pip asks setup.py for metadata.
        self.sources = compiled_sources()
        self.fallback: str | None = None
        extensions = self._extensions()
        # Never none: `build` runs build_ext only for a distribution with extensions, and
        # a pure build must still run it, to remove an earlier build's and to record why.
        self.distribution.ext_modules = extensions or [PLACEHOLDER]
        super().finalize_options()
        self.extensions = extensions

    def _extensions(self) -> list[Extension]:
        if os.environ.get(PURE_BUILD_ENV) == "1":
            self.fallback = f"{PURE_BUILD_ENV}=1"
            return []
        try:
            from mypyc.build import mypycify
        except ImportError as exc:
            self.fallback = f"mypyc is not installed ({exc})"
            return []
        try:
            extensions = mypycify(
                self.sources, group_name=GROUP, multi_file=True, target_dir="build/mypyc"
            )
        except (Exception, SystemExit) as exc:  # mypyc exits on a module it refuses
            self.fallback = f"mypyc refused the modules ({type(exc).__name__}: {exc})"
            return []
        for extension in extensions:  # the shared headers of a group inside a package
            extension.include_dirs.append("build/mypyc/replica")
        return extensions

    def run(self) -> None:
        self.in_source = bool(self.inplace or self.editable_mode)
        self._remove_old()
        if self.extensions:
            try:
                super().run()
            except Exception as exc:  # CompileError, a missing compiler, a linker error
                self._remove_outputs()
                self.extensions = []
                self.fallback = f"the C compiler failed ({type(exc).__name__}: {exc})"
        self._finish()

    def _remove_old(self) -> None:
        """A build left by an earlier install, or a module since dropped from the list, must not
        ride along: extensions of this build only."""
        _remove_extensions(Path(self.build_lib) / "replica")
        if self.in_source:
            _remove_extensions(ROOT / "replica")

    def _finish(self) -> None:
        if not self.extensions:
            self._remove_old()
        if self.fallback is not None:
            say_pure(self.fallback)
        self._record()

    def build_extension(self, ext: Any) -> None:
        """As setuptools does, but compiling an extension's C files in parallel."""
        compile_one = self.compiler.compile
        jobs = os.cpu_count() or 1

        def compile_all(sources: list[str], *args: Any, **kwargs: Any) -> list[str]:
            with ThreadPoolExecutor(jobs) as pool:
                parts = pool.map(lambda s: compile_one([s], *args, **kwargs), sources)
                return [obj for objects in parts for obj in objects]

        self.compiler.compile = compile_all
        try:
            super().build_extension(ext)
        finally:
            self.compiler.compile = compile_one

    def _remove_outputs(self) -> None:
        for output in self.get_outputs():
            Path(output).unlink(missing_ok=True)

    def _record(self) -> None:
        compiled = bool(self.extensions)
        record = {
            "build": "compiled" if compiled else "pure",
            "reason": self.fallback,
            "sources": source_hashes(self.sources) if compiled else {},
        }
        targets = [Path(self.build_lib) / "replica"]
        if self.in_source:
            targets.append(ROOT / "replica")
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            (target / RECORD).write_text(json.dumps(record, indent=1) + "\n")


def _remove_extensions(package: Path) -> None:
    for path in package.rglob("*"):
        if path.suffix in (".so", ".pyd"):
            path.unlink()


setup(
    ext_modules=[PLACEHOLDER],
    cmdclass={"build_ext": BuildCompiled},
)
