"""A user's install: a fresh venv, `pip install '<checkout>[testing]'`, the README's scenario.

The README promises that a project of one's own, with no conftest, gets the
`replica_cluster` fixture from the installed plugin.  This test holds it to
that from an empty directory outside the repository, in a venv that shares
nothing with the one running the tests (pip may reuse its download cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT = 600
RUN_TIMEOUT = 180
NOT_SOURCE = (".venv", ".git", "data", "build", "dist", "__pycache__", "*.egg-info", ".*_cache")


def readme_first_python_block() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_scenario_passes_in_a_fresh_venv_with_replica_testing_installed(
    tmp_path: Path,
) -> None:
    # A copy of the checkout, so a build never reuses or leaves files in the working tree.
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=shutil.ignore_patterns(*NOT_SOURCE))
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    install = subprocess.run(
        [*pip, f"{checkout}[testing]"],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT,
        env=environment,
    )
    assert install.returncode == 0, install.stdout + install.stderr

    project = tmp_path / "my-project"
    project.mkdir()
    (project / "test_cart.py").write_text(readme_first_python_block())
    run = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_cart.py"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env=environment,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout, run.stdout
    # It ran the installed copy, not this checkout.
    where = subprocess.run(
        [str(python), "-c", "import replica; print(replica.__file__)"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
        env=environment,
    )
    assert str(env_dir) in where.stdout, where.stdout
    assert sys.prefix not in where.stdout
