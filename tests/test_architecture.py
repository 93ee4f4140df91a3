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
LAYERS = ["kernel", "data", "runs", "eval", "track", "train", "submit", "bundle", "sweep", "report", "api", "cli"]
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
