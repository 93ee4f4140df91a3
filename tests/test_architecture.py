"""The rules of cpx's packages, as they are written: each package's ``__init__`` docstring says
which other cpx packages it may import (``May import: ``cpx.kernel``, ``cpx.data``.``), and this
test reads those sentences and holds every module to them.

Every module of the ``cpx`` package is parsed (nothing is imported) and each of its imports
of another cpx package, at module level or inside a function, is checked against its package's
sentence. The top-level modules (the public API ``cpx/__init__.py``, ``python -m cpx`` and the
pytest plugin ``cpx.testing``) stand above every package: they may import any, and no package
imports them.
"""

import ast
import re
from pathlib import Path

import pytest

import cpx

ROOT = Path(cpx.__file__).parent
PACKAGES = sorted(p.parent.name for p in ROOT.glob("*/__init__.py"))
TOP = {"__init__", "__main__", "testing"}
UI_LIBRARIES = {"typer", "rich", "click"}
# Imports the written rules forbid, allowed for a while, each with the change that removes it.
TEMPORARY_IMPORTS: dict[tuple[str, str], str] = {}


def may_import(docstring: str, packages=PACKAGES) -> set[str]:
    """The packages named by a docstring's ``May import:`` sentence (up to its first full stop):
    each ``cpx.NAME`` it mentions, or every package for "every cpx package".

    :raises ValueError: the docstring has no such sentence.
    """
    found = re.search(r"May import:(.*?)(?:\.\s|\.$)", " ".join(docstring.split()) + " ")
    if not found:
        raise ValueError("no 'May import:' sentence")
    if "every cpx package" in found.group(1):
        return set(packages)
    return set(re.findall(r"``cpx\.(\w+)``", found.group(1)))


def _rules() -> dict[str, set[str]]:
    out = {}
    for name in PACKAGES:
        path = ROOT / name / "__init__.py"
        out[name] = may_import(ast.get_docstring(ast.parse(path.read_text())) or "") - {name}
    return out


def _package(module: str) -> str:
    """The package name of a dotted cpx module (``cpx.eval.predict`` -> ``eval``); a top-level
    module's own name (``cpx.testing`` -> ``testing``, ``cpx`` -> ``__init__``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


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


def _wrong_imports(module: str, path: Path, rules: dict[str, set[str]]) -> list[str]:
    """``line N: target (why)`` for each import of ``module`` its package's rule forbids."""
    here = _package(module)
    if here in TOP:
        return []
    wrong = []
    for line, target in _imports(module, path):
        if not target.startswith("cpx."):
            continue
        there = _package(target)
        if there == here or target == "cpx.__version__":
            continue
        if there in TOP:
            wrong.append(f"line {line}: {target} (the top level)")
        elif there in rules and there not in rules[here] and (module, f"cpx.{there}") not in TEMPORARY_IMPORTS:
            wrong.append(f"line {line}: {target} (cpx/{here}/__init__.py does not list cpx.{there})")
    return wrong


MODULES = list(_modules())
RULES = _rules()


def test_every_package_states_what_it_may_import():
    assert PACKAGES and set(RULES) == set(PACKAGES)
    unknown = {name: sorted(allowed - set(PACKAGES)) for name, allowed in RULES.items() if allowed - set(PACKAGES)}
    assert not unknown, f"'May import:' names packages that do not exist: {unknown}"


def test_the_rules_let_imports_flow_one_way():
    """No package may import, directly or through others, a package that may import it."""
    order, todo = [], dict(RULES)
    while todo:
        ready = sorted(name for name, allowed in todo.items() if not (allowed & set(todo)))
        assert ready, f"the 'May import:' sentences form a cycle among {sorted(todo)}"
        order += ready
        for name in ready:
            del todo[name]
    assert order[0] == "kernel" and order[-1] == "cli"


@pytest.mark.parametrize("module,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_follow_the_written_rules(module, path):
    wrong = _wrong_imports(module, path, RULES)
    assert not wrong, f"{path.relative_to(ROOT.parent)} imports what its package may not:\n" + "\n".join(wrong)


def test_temporary_imports_are_still_needed():
    stale = []
    for (module, package), why in TEMPORARY_IMPORTS.items():
        path = dict(MODULES).get(module)
        if path is None or not any(t == package or t.startswith(package + ".") for _, t in _imports(module, path)):
            stale.append(f"{module} -> {package} ({why})")
    assert not stale, "remove these entries of TEMPORARY_IMPORTS:\n" + "\n".join(stale)


def test_the_checker_reads_the_sentence_and_sees_a_forbidden_import(tmp_path):
    assert may_import("Data.\n\nMay import: ``cpx.kernel``. Never ``cpx.train``.") == {"kernel"}
    assert may_import("May import: ``cpx.kernel``,\n``cpx.data``.") == {"kernel", "data"}
    assert may_import("May import: no other cpx package (the standard library only).") == set()
    assert may_import("May import: every cpx package.", ["a", "b"]) == {"a", "b"}
    with pytest.raises(ValueError):
        may_import("Owns the ledger.")
    fake = tmp_path / "cpx" / "submit" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("from cpx.eval import metrics\ndef f():\n    from cpx.train.run import train\n"
                    "    from ..cli import main\n    from cpx import testing\n")
    wrong = _wrong_imports("cpx.submit.bad", fake, RULES)
    assert sorted({w.split(":")[0] for w in wrong}) == ["line 3", "line 4", "line 5"], wrong


@pytest.mark.parametrize("module,path", [(m, p) for m, p in MODULES if _package(m) != "cli"],
                         ids=[m for m, _ in MODULES if _package(m) != "cli"])
def test_core_never_imports_the_ui(module, path):
    used = {t.split(".")[0] for _, t in _imports(module, path)} & UI_LIBRARIES
    assert not used, f"{path.relative_to(ROOT.parent)} imports {sorted(used)}: only cpx/cli may"


# --------------------------------------------------------------------------------------------
# One reader: only cpx/data/images.py opens image and mask files


REPO = ROOT.parent
READER = "cpx/data/images.py"
# solution/run.py, copied into every submission, runs without cpx: torch, numpy and Pillow only
STANDALONE = "cpx/submit/standalone_run.py"
STANDALONE_LIBRARIES = {"torch", "numpy", "PIL"}
# the scoring program `cpx bundle export` writes into a bundle runs without cpx: numpy and Pillow only
SCORER = "cpx/bundle/standalone_score.py"
SCORER_LIBRARIES = {"numpy", "PIL"}
# modules allowed to open image files directly for a while (none now: the submission-format
# plugins decode zip entries through cpx.data.images since zipcheck gave that up)
TEMPORARY_READERS: dict[str, int] = {}


def _opens_files(path: Path) -> list[str]:
    """``line N: what`` for every direct use of an image library's file reader in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else \
                node.value.attr if isinstance(node.value, ast.Attribute) else ""
            if (owner, node.attr) in {("Image", "open"), ("tifffile", "imread"), ("tifffile", "TiffFile"),
                                      ("cv2", "imread")}:
                found.append(f"line {node.lineno}: {owner}.{node.attr}")
        elif isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if (node.module == "PIL.Image" and "open" in names or node.module == "tifffile"
                    and names & {"imread", "TiffFile"} or node.module == "cv2" and "imread" in names):
                found.append(f"line {node.lineno}: from {node.module} import {', '.join(sorted(names))}")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"line {node.lineno}: import {m}" for m in modules if m.split(".")[0] == "imageio"]
    return found


SOURCES = sorted(p.relative_to(REPO).as_posix() for folder in ("cpx", "plugins")
                 for p in (REPO / folder).rglob("*.py"))


def test_only_the_reader_opens_image_files():
    wrong = []
    for rel in SOURCES:
        if rel in (READER, STANDALONE, SCORER):
            continue
        uses = _opens_files(REPO / rel)
        if len(uses) > TEMPORARY_READERS.get(rel, 0):
            wrong += [f"{rel} {use}" for use in uses]
    assert not wrong, ("read images and masks through cpx.data.images (read_image, image_size, read_mask, "
                       "image_header), not directly:\n" + "\n".join(wrong))


def test_temporary_reader_allowances_are_still_needed():
    stale = []
    for rel, allowed in TEMPORARY_READERS.items():
        used = len(_opens_files(REPO / rel)) if (REPO / rel).is_file() else 0
        if used < allowed:
            stale.append(f"{rel}: allowed {allowed}, uses {used}")
    assert not stale, "lower or remove these entries of TEMPORARY_READERS:\n" + "\n".join(stale)


def test_the_standalone_runner_imports_only_torch_numpy_and_pillow():
    import sys

    tops = {t.split(".")[0] for _, t in _imports("standalone_run", REPO / STANDALONE)}
    assert tops - STANDALONE_LIBRARIES - set(sys.stdlib_module_names) == set()


def test_the_exported_scorer_imports_only_numpy_and_pillow():
    import sys

    tops = {t.split(".")[0] for _, t in _imports("standalone_score", REPO / SCORER)}
    assert tops - SCORER_LIBRARIES - set(sys.stdlib_module_names) == set()


def test_the_reader_checker_sees_every_direct_read(tmp_path):
    fake = tmp_path / "bad.py"
    fake.write_text("import imageio.v3 as iio\nfrom PIL import Image\nimport PIL\nimport tifffile, cv2\n"
                    "from tifffile import imread\n"
                    "def f(p):\n    Image.open(p); PIL.Image.open(p); tifffile.TiffFile(p); tifffile.imread(p)\n"
                    "    return cv2.imread(p)\n")
    found = sorted(f.split(": ", 1)[1] for f in _opens_files(fake))
    assert found == sorted(["import imageio.v3", "from tifffile import imread", "Image.open", "Image.open",
                            "tifffile.TiffFile", "tifffile.imread", "cv2.imread"])
