"""The compiled build and its pure-Python fallback (docs/compiled.md).

An install with no C compiler reachable still succeeds, says why it is pure,
and serves; REPLICA_PURE_PYTHON=1 runs the .py sources even where compiled
modules are installed; an edited source is never shadowed by its stale
extension; `status` names the build that runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import venv
from pathlib import Path

import orjson
import pytest

import replica.build
from replica.node.router import Node
from tests.test_structure import all_imports

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "replica"
NOT_SOURCE = (".venv", ".git", "data", "build", "dist", "__pycache__", "*.egg-info", ".*_cache")
BUILT = ("*.so", "*.pyd", "_build.json")
INSTALL_TIMEOUT = 300
FALLBACK_LINE = "replica: installing the pure-Python modules, not compiled: "

INIT = (
    b'{"src":"c0","dest":"n1","body":{"type":"init","msg_id":1,"node_id":"n1","node_ids":["n1"]}}'
)
WRITE = b'{"src":"c1","dest":"n1","body":{"type":"mv_write","msg_id":2,"key":"k","value":"v1"}}'


def _record() -> dict[str, object] | None:
    path = PACKAGE / "_build.json"
    return json.loads(path.read_text()) if path.exists() else None


def _python(code: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "REPLICA_PURE_PYTHON"}
    environment.update({"PYTHONPATH": str(ROOT), **env})
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=60,
    )


compiled_here = pytest.mark.skipif(
    (_record() or {}).get("build") != "compiled",
    reason="this checkout holds no compiled build (scripts/run.py makes one)",
)


def test_status_names_the_build_that_runs() -> None:
    node = Node("n1", ["n1"])
    reply = orjson.loads(node.handle_line(b'{"type":"status","msg_id":1}'))  # type: ignore[arg-type]
    assert reply["build"] == replica.build.BUILD
    assert replica.build.BUILD in ("compiled", "pure")


def test_replica_pure_python_loads_every_compiled_module_from_its_source() -> None:
    code = (
        "import replica.build as b, replica.crdt.pn_counter as p, replica.keyspaces as k;"
        "print(b.BUILD, p.__file__.endswith('.py'), k.__file__.endswith('.py'))"
    )
    run = _python(code, REPLICA_PURE_PYTHON="1")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["pure", "True", "True"]


@compiled_here
def test_the_compiled_build_runs_unless_told_otherwise() -> None:
    run = _python(
        "import replica.build as b, replica.crdt.pn_counter as p; print(b.BUILD, p.__file__)"
    )
    assert run.returncode == 0, run.stderr
    build, path = run.stdout.split()
    assert build == "compiled"
    assert not path.endswith(".py")


@compiled_here
def test_an_edited_source_runs_instead_of_its_stale_extension(tmp_path: Path) -> None:
    copy = tmp_path / "replica"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited = copy / "crdt" / "version_vector.py"
    edited.write_text(edited.read_text() + "\nEDITED = True\n")
    run = _python(
        "import replica.build as b, replica.crdt.version_vector as v; print(b.BUILD, v.EDITED)",
        cwd=tmp_path,
        PYTHONPATH=str(tmp_path),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["pure", "True"]
    assert "stale compiled modules" in run.stderr
    assert "replica.crdt.version_vector" in run.stderr


def test_an_install_with_no_c_compiler_falls_back_to_the_pure_modules_and_serves(
    tmp_path: Path,
) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(*NOT_SOURCE, *BUILT))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bin_dir = env_dir / "bin"
    python = bin_dir / "python"
    site = Path(_venv_path(python, "purelib"))
    # This interpreter's packages (pip, mypy, orjson, uvloop, lmdb...) are seen after the
    # venv's own, so the install needs no index and builds without isolation.
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    environment = {
        "PATH": str(bin_dir),  # no gcc, no cc
        "CC": "/bin/false",
        "CXX": "/bin/false",
        "HOME": str(tmp_path),
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    pip = [str(python), "-m", "pip", "install", "--no-build-isolation", "--no-deps"]
    if not _has_new_setuptools(python, environment):  # pyproject's license needs 77
        tools = subprocess.run(
            [*pip, "--quiet", "setuptools>=77"],
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
        assert tools.returncode == 0, tools.stdout + tools.stderr

    install = subprocess.run(
        [*pip, "-v", str(checkout)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        env=environment,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    output = install.stdout + install.stderr
    assert f"{FALLBACK_LINE}the C compiler failed" in output, output

    which = subprocess.run(
        [str(python), "-c", "import replica.build as b; print(b.BUILD); print(b.describe())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=60,
    )
    assert which.returncode == 0, which.stderr
    assert which.stdout.splitlines()[0] == "pure"
    assert "installed pure: the C compiler failed" in which.stdout
    assert not list((site / "replica").rglob("*.so"))

    served = subprocess.run(
        [str(bin_dir / "replica"), "stdio"],
        input=INIT + b"\n" + WRITE + b"\n",
        capture_output=True,
        cwd=tmp_path,
        env=environment,
        timeout=60,
    )
    replies = [orjson.loads(line)["body"] for line in served.stdout.splitlines()]
    assert [r["type"] for r in replies] == ["init_ok", "mv_write_ok"], served.stderr
    assert replies[1]["values"][0]["value"] == "v1"

    # Asked for on purpose: no compile tried, and the line says so.
    chosen = subprocess.run(
        [*pip, "-v", "--force-reinstall", str(checkout)],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        env={**environment, "REPLICA_PURE_BUILD": "1"},
    )
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert f"{FALLBACK_LINE}REPLICA_PURE_BUILD=1" in chosen.stdout + chosen.stderr


def _venv_path(python: Path, name: str) -> str:
    code = f"import sysconfig; print(sysconfig.get_paths()[{name!r}])"
    return subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def _has_new_setuptools(python: Path, environment: dict[str, str]) -> bool:
    code = "import setuptools; print(setuptools.__version__.split('.')[0])"
    found = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=environment
    )
    return found.returncode == 0 and int(found.stdout.strip()) >= 77


def test_every_library_the_compiled_modules_reach_is_a_build_requirement() -> None:
    """mypyc checks what a compiled module imports, and an isolated build sees nothing else.

    A library missing from `[build-system] requires` makes a user's `pip install .`
    fall back to the pure build, which no editable install here would notice.
    """
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requires = {
        re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower().replace("-", "_")
        for r in pyproject["build-system"]["requires"]
    }
    compiled = [
        source.removesuffix(".py").replace("/", ".")
        for source in pyproject["tool"]["replica"]["compiled"]
    ]
    imports = all_imports(PACKAGE)
    todo, seen = list(compiled), set()
    libraries: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:end]) for end in range(1, len(parts))]  # its packages run too
        for name in imports[module]:
            top = name.split(".")[0]
            if name in imports:
                todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                libraries.setdefault(top, module)
    assert len(seen) > len(compiled)  # it followed imports
    missing = {top: module for top, module in libraries.items() if top not in requires}
    assert not missing, f"imported by compiled code but not a build requirement: {missing}"
