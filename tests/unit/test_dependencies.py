"""A plain `pip install axolotl-maskthought` brings every module the package imports.

The package's imports (read with `ast`) are matched to installed distributions, and
those must be in the closure of pyproject.toml's `dependencies` (their requirements,
recursively, as installed here) unless an optional-dependencies entry names them. Case:
the quickstart trained for minutes, then died with `ModuleNotFoundError: matplotlib`
while plotting, in an install without the `tests` extra.
"""

from __future__ import annotations

import ast
import sys
from importlib import metadata

from packaging.requirements import Requirement
from paths import REPO_ROOT

PACKAGE = REPO_ROOT / "axolotl_maskthought"


def _project() -> dict:
    """pyproject.toml's ``[project]`` table."""
    import tomllib

    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def install_requires() -> list[str]:
    return [_name(item) for item in _project()["dependencies"]]


def extras() -> set[str]:
    return {_name(item) for items in _project()["optional-dependencies"].values() for item in items}


def closure(names: list[str]) -> set[str]:
    """The distributions a plain install of ``names`` brings (markers evaluated, extras left out)."""
    seen, pending = set(), list(names)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requirements:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name.lower().replace("_", "-"))
    return seen


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(getattr(name, "id", None) in ("ImportError", "ModuleNotFoundError") for name in names):
            return True
    return False


def imported_modules() -> dict[str, list[tuple[str, bool]]]:
    """Top-level third-party modules the package imports -> (file, guarded) per import;
    guarded: inside a ``try`` that catches ImportError (a clear error when it is absent)."""
    found: dict[str, list[tuple[str, bool]]] = {}

    def visit(node, path: str, guarded: bool) -> None:
        if isinstance(node, ast.Try):
            inner = guarded or _catches_import_error(node)
            for child in node.body:
                visit(child, path, inner)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, path, guarded)
            return
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("__future__", PACKAGE.name):
                found.setdefault(top, []).append((path, guarded))
        for child in ast.iter_child_nodes(node):
            visit(child, path, guarded)

    for path in sorted(PACKAGE.rglob("*.py")):
        visit(ast.parse(path.read_text(encoding="utf-8")), str(path.relative_to(REPO_ROOT)), False)
    return found


def test_every_imported_module_comes_with_a_plain_install():
    """Imported modules come with `install_requires`; an extra-only one (vllm) must be
    imported under a ``try`` that turns its absence into a clear error somewhere."""
    plain = closure(install_requires())
    optional = extras()
    distributions = metadata.packages_distributions()
    missing = []
    for module, imports in sorted(imported_modules().items()):
        providers = {name.lower().replace("_", "-") for name in distributions.get(module, [module])}
        if providers & plain:
            continue
        if providers & optional and any(guarded for _, guarded in imports):
            continue
        missing.append(f"{module} (imported in {imports[0][0]}; from {sorted(providers)})")
    assert not missing, f"imported but not installed by `pip install axolotl-maskthought`: {missing}"


def test_the_check_sees_guarded_and_plain_imports():
    imports = imported_modules()
    assert any(guarded for _, guarded in imports["vllm"])  # evaluate._import_vllm
    assert not any(guarded for _, guarded in imports["matplotlib"])
    assert "matplotlib" in install_requires()
