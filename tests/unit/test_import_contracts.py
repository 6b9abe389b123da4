"""The import contracts of pyproject.toml bite: a planted import in a copy of the package breaks the
contract that names it, every third-party library envoi imports is confined by one, and every
declared dependency is imported by something."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]

# Declared, but run as a program rather than imported: `envoi api` starts `python -m gunicorn`.
RUN_NOT_IMPORTED = {"gunicorn"}


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the envoi package found in `tree`, with the contracts of `tree`/pyproject.toml."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([LINT_IMPORTS, "--no-cache", "--config", str(tree / "pyproject.toml")],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=60)


def copy_with(tmp_path: Path, planted: dict[str, str]) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "envoi", tree / "envoi", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for name, text in planted.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tree


def test_the_real_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in result.stdout


@pytest.mark.parametrize(("planted", "contract", "illegal"), [
    # a new module of an existing package
    ({"envoi/mta/planted.py": "import falcon\n"}, "falcon only in envoi.api", "envoi.mta.planted -> falcon"),
    # a new package nobody listed anywhere
    ({"envoi/newpkg/__init__.py": "", "envoi/newpkg/cache.py": "from redis import Redis\n"},
     "redis only in envoi.infra", "envoi.newpkg.cache -> redis"),
    # a late import inside a function counts too
    ({"envoi/events/planted.py": "def f():\n    import aiosmtplib\n"},
     "SMTP, DKIM and address libraries only in envoi.mta", "envoi.events.planted -> aiosmtplib"),
    # the SMTP server library: its own module only, not the rest of envoi.mta
    ({"envoi/mta/planted.py": "from aiosmtpd.smtp import SMTP\n"},
     "aiosmtpd only in envoi.mta.listener", "envoi.mta.planted -> aiosmtpd"),
])
def test_a_planted_import_breaks_the_contract_that_names_it(tmp_path, planted, contract, illegal):
    result = lint_imports(copy_with(tmp_path, planted))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{contract} BROKEN" in result.stdout, result.stdout
    assert illegal in result.stdout, result.stdout


def test_a_new_top_level_package_must_take_a_layer(tmp_path):
    result = lint_imports(copy_with(tmp_path, {"envoi/newpkg/__init__.py": ""}))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Layers BROKEN" in result.stdout, result.stdout
    assert "envoi.newpkg" in result.stdout, result.stdout


def third_party_imports() -> set[str]:
    graph = grimp.build_graph("envoi", include_external_packages=True, cache_dir=None)
    return {m for m in graph.modules
            if "." not in m and m != "envoi" and m not in sys.stdlib_module_names}


def test_every_third_party_library_is_confined_by_a_contract():
    protected = {m for c in CONTRACTS if c["type"] == "protected" for m in c["protected_modules"]}
    imported = third_party_imports()
    assert imported, "the graph found no third-party imports: the check itself is broken"
    assert imported - protected == set(), "give each of these a protected contract in pyproject.toml"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_declared_dependency_is_imported():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {normalise(re.match(r"[A-Za-z0-9_.-]+", d).group()) for d in project["dependencies"]}
    distributions = metadata.packages_distributions()
    imported = {normalise(dist) for module in third_party_imports() for dist in distributions.get(module, [])}
    assert declared - imported - RUN_NOT_IMPORTED == set(), "remove these from [project].dependencies"
