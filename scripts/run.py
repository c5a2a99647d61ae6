#!/usr/bin/env python3
"""Install replica into a private virtual environment, then start it or test it.

    python3 scripts/run.py cluster            # the local cluster of cluster.toml
    python3 scripts/run.py cluster --faults   # the same, its links under `replica fault`
    python3 scripts/run.py test               # ruff check, ruff format --check, mypy, every test

`cluster` passes its arguments on to `replica cluster up`, with
`--config cluster.toml` unless they name a cluster file.

Only python3 is assumed.  The environment lives in `.venv` beside this
repository, with replica installed editable and the modules pyproject.toml lists
under [tool.replica] compiled in place by mypyc (docs/compiled.md).  It is
reinstalled only when pyproject.toml, setup.py or a compiled module's source
changed since the last install (or REPLICA_PURE_BUILD did), so the second run
starts at once and a compiled module is never older than its source.

`cluster` and `node` then become the command they start (exec, the same
process): a signal sent to run.py is a signal to the cluster's supervisor or
the node itself, so SIGTERM, SIGINT and SIGHUP stop it cleanly, and a run.py
killed with SIGKILL is a killed supervisor, whose nodes notice and stop.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tomllib
import venv
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".installed-pyproject"  # the dependencies: sha256 of pyproject.toml
BUILD_STAMP = VENV / ".installed-build"  # the compiled modules: see build_digest
PURE_BUILD = "REPLICA_PURE_BUILD"


def build_digest(pyproject: dict[str, Any]) -> str | None:
    """What the build was made from: setup.py, each compiled module's source, the choice.

    None when there is no setup.py, so nothing to compile.
    """
    if not (ROOT / "setup.py").exists():
        return None
    compiled = pyproject["tool"]["replica"]["compiled"]
    digest = hashlib.sha256(os.environ.get(PURE_BUILD, "").encode())
    for name in ["setup.py", *compiled]:
        digest.update(f"\0{name}\0".encode() + (ROOT / name).read_bytes())
    return digest.hexdigest()


def ensure_environment() -> None:
    text = (ROOT / "pyproject.toml").read_bytes()
    pyproject = tomllib.loads(text.decode())
    deps, build = hashlib.sha256(text).hexdigest(), build_digest(pyproject)
    fresh = STAMP.exists() and STAMP.read_text() == deps
    if fresh and (build is None or (BUILD_STAMP.exists() and BUILD_STAMP.read_text() == build)):
        return
    if not (BIN / "python").exists():
        print("creating virtual environment in .venv", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if fresh:  # only a compiled module's source (or setup.py) changed: rebuild the project
        print("compiling replica again: a compiled module changed", file=sys.stderr)
        subprocess.run([*pip, "--no-build-isolation", "--no-deps", "-e", str(ROOT)], check=True)
    else:
        print("installing replica and its test dependencies, compiling it", file=sys.stderr)
        requires = pyproject["build-system"]["requires"]
        subprocess.run([*pip, "--upgrade", "pip", *requires], check=True)
        # The build tools just installed, so that a rebuild after an edit only compiles.
        subprocess.run([*pip, "--no-build-isolation", "-e", f"{ROOT}[test]"], check=True)
    check = [str(BIN / "python"), "-c", "import replica.build as b; print(b.describe())"]
    made = subprocess.run(check, capture_output=True, text=True, check=True, cwd=VENV)
    print(f"replica build: {made.stdout.strip()}", file=sys.stderr)
    STAMP.write_text(deps)
    if build is not None:
        BUILD_STAMP.write_text(build)


def run(argv: list[str]) -> int:
    """Run `argv` to its end; Ctrl-C is passed on to it and waited for, never cut short.

    `subprocess.call` would kill the child a quarter second after Ctrl-C,
    before a cluster has stopped its nodes, and print a traceback.
    """
    process = subprocess.Popen(argv, cwd=ROOT)
    while True:
        try:
            return process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)  # a terminal sent it the same; once more is harmless


def become(argv: list[str]) -> NoReturn:
    """Replace this process with `argv`, run from the repository (as `run` does)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(ROOT)
    os.execv(argv[0], argv)


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "help"
    extra = sys.argv[2:]
    if command == "test":
        ensure_environment()
        lint = run([str(BIN / "ruff"), "check", "."])
        formatted = run([str(BIN / "ruff"), "format", "--check", "."])
        types = run([str(BIN / "mypy")])
        tests = run([str(BIN / "python"), "-m", "pytest", *extra])
        return lint or formatted or types or tests
    if command == "cluster":
        ensure_environment()
        given = any(arg == "--config" or arg.startswith("--config=") for arg in extra)
        config = [] if given else ["--config", "cluster.toml"]
        become([str(BIN / "replica"), "cluster", "up", *config, *extra])
    if command == "node":
        ensure_environment()
        become([str(BIN / "replica"), "serve", "--config", "cluster.toml", *extra])
    print(__doc__, file=sys.stderr)
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
