"""The layers of cpx: imports flow one way, from the CLI down to the kernel.

Every module of the ``cpx`` package is parsed (nothing is imported) and each of its imports
of another cpx package, at module level or inside a function, is checked against ``LAYERS``.
"""

import ast
from pathlib import Path

import pytest

import cpx

ROOT = Path(cpx.__file__).parent

# Lowest first: a package may import its own layer and the layers before it.
LAYERS = ["kernel", "data", "runs", "eval", "train", "submit", "sweep", "report", "cli"]
# Above every layer: the public API (cpx/__init__.py) and the pytest plugin for plugin authors.
TOP = {"__init__", "__main__", "testing"}
UI_LIBRARIES = {"typer", "rich", "click"}


def _package(module: str) -> str:
    """The layer name of a dotted cpx module (``cpx.eval.predict`` -> ``eval``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(package: str) -> int:
    return len(LAYERS) if package in TOP else LAYERS.index(package)


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(module: str, path: Path):
    """(line, imported module) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[:len(base) - node.level + 1]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from cpx import data` imports the package cpx.data
                yield node.lineno, f"{target}.{alias.name}"


MODULES = list(_modules())


def test_every_package_is_in_a_layer():
    packages = {_package(m) for m, _ in MODULES}
    assert packages - set(LAYERS) - TOP == set()


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_flow_down(module, path):
    here = _package(module)
    wrong = []
    for line, target in _imports(module, path):
        if not target.startswith("cpx.") or target.startswith("cpx_"):
            continue
        there = _package(target)
        if there not in LAYERS and there not in TOP:
            continue  # `from cpx import __version__` and the like
        if there in TOP and there != here:
            if target.split(".")[1] in ("__version__",):
                continue
            wrong.append(f"line {line}: {target} (the top level)")
        elif there in LAYERS and _layer(there) > _layer(here):
            wrong.append(f"line {line}: {target} ({there} is above {here})")
    assert not wrong, f"{path.relative_to(ROOT.parent)} imports upwards:\n" + "\n".join(wrong)


@pytest.mark.parametrize("module,path", [(m, p) for m, p in MODULES if _package(m) != "cli"],
                         ids=[m for m, _ in MODULES if _package(m) != "cli"])
def test_core_never_imports_the_ui(module, path):
    used = {t.split(".")[0] for _, t in _imports(module, path)} & UI_LIBRARIES
    assert not used, f"{path.relative_to(ROOT.parent)} imports {sorted(used)}: only cpx/cli may"


def test_the_checker_sees_an_upward_import(tmp_path):
    fake = tmp_path / "cpx" / "data" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from cpx.train.run import train\n    from ..cli import main\n")
    found = [t for _, t in _imports("cpx.data.bad", fake)]
    assert "cpx.train.run" in found and "cpx.cli.main" in found
    assert _layer(_package("cpx.train.run")) > _layer("data")
