"""The ``solution/`` folder of a submission: a standalone predictor the organisers can run.

It holds four things, none of which needs cpx:

* the model's source as one module, a verbatim copy of the arch file a model names in
  ``model.cpx_source = (arch_file, builder_name, kwargs)``; it may import only torch, numpy,
  Pillow and the standard library;
* ``model.json``: the builder's name and keyword arguments, the input size, the palette;
* the weights file (``ckpt.pth``) with the weights under the competition's key;
* ``run.py`` (``--input``, ``--output``, ``--weights``) and ``requirements.txt``;
* with a calibrated run, its logit offsets in ``model.json`` (``logit_offsets``), and with
  post-processing, each step's standalone module beside ``run.py`` and its call in
  ``model.json`` (``postprocess``: module, function, kwargs).

``run.py`` (a verbatim copy of :mod:`cpx.submit.standalone_run`) repeats cpx's own prediction
(:class:`cpx.eval.predict.Predictor` with one model) step by step, test-time augmentation
included: antialiased bilinear resize of the uint8 RGB image to the run's size, float in
[0, 1], channels-last, the model (which normalises internally), TTA views merged as logits
(mirrored ones mirrored back with left/right classes swapped), logits resized back
bilinearly (align_corners=False), the first maximum, palette PNG. One image per forward pass.
It takes one image (one mask out) or a folder (a mask per image).
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from cpx.data.competition import Competition, Solution
from cpx.data.images import IMAGE_SUFFIXES
from cpx.data.masks import MaskCodec
from cpx.eval.predict import TILE_OVERLAP
from cpx.kernel.errors import SubmissionError
from cpx.kernel.files import atomic_torch_save, atomic_write_text
from cpx.runs.checkpoint import accepted_weight_keys

# top-level import names a shipped model module may use besides the standard library
ALLOWED_IMPORTS = frozenset({"torch", "numpy", "PIL"})
MODEL_JSON = "model.json"
REQUIREMENTS = "requirements.txt"
# What run.py and the model source need, as version ranges pip can resolve anywhere (not this
# machine's exact builds): the torch range cpx itself supports, numpy and Pillow as cpx needs them
REQUIREMENTS_LINES = ("torch>=2.2,<3", "numpy>=1.24", "pillow>=10")

# the runner shipped as solution/run.py: a standalone copy of cpx's own prediction, kept as a
# real module beside this one so that tests can import it and compare it with the predictor
RUN_PY = (Path(__file__).resolve().parent / "standalone_run.py").read_text()


@dataclass(frozen=True)
class ModelSource:
    """Where a model's standalone definition lives and how to rebuild it."""

    arch_file: Path
    builder: str
    kwargs: dict

    @property
    def module_name(self) -> str:
        """The module name of the copy beside run.py."""
        stem = self.arch_file.stem
        # the copy sits beside run.py, so it must not shadow it or be unimportable
        return stem if stem.isidentifier() and stem not in ("run", "model") else "model_arch"


def model_source(model: torch.nn.Module, model_name: str = "") -> ModelSource:
    """The standalone source a model declares, checked to be shippable."""
    label = f"model {model_name!r}" if model_name else "the model"
    source = getattr(model, "cpx_source", None)
    if not source:
        raise SubmissionError(
            f"{label} has no standalone source (model.cpx_source), so cpx cannot write the "
            f"submission's solution/ folder; models need cpx_source = (arch_file, builder, kwargs)")
    try:
        arch_file, builder, kwargs = source
    except (TypeError, ValueError):
        raise SubmissionError(f"{label}: cpx_source must be (arch_file, builder_name, kwargs), "
                              f"got {source!r}") from None
    path = Path(arch_file)
    if not path.is_file():
        raise SubmissionError(f"{label}: arch file {path} does not exist")
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError) as exc:
        raise SubmissionError(f"{label}: builder arguments are not JSON values ({exc})") from None
    src = ModelSource(path, str(builder), dict(kwargs))
    check_standalone(path.read_text(), path, src.builder)
    return src


def foreign_imports(source: str, filename: str = "<source>") -> list[str]:
    """Modules ``source`` imports beyond torch, numpy, Pillow and the standard library."""
    tree = ast.parse(source, filename)
    bad: list[str] = []
    stdlib = set(getattr(sys, "stdlib_module_names", ())) | {"__future__"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                bad.append("." * node.level + (node.module or ""))
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in ALLOWED_IMPORTS and top not in stdlib and name not in bad:
                bad.append(name)
    return bad


def check_standalone(source: str, path: os.PathLike, builder: str) -> None:
    """Raise SubmissionError unless ``source`` parses, imports only what a solution may
    and defines ``builder`` at the top level."""
    try:
        bad = foreign_imports(source, str(path))
        tree = ast.parse(source, str(path))
    except SyntaxError as exc:
        raise SubmissionError(f"{path}: not valid Python ({exc.msg}, line {exc.lineno})") from None
    if bad:
        raise SubmissionError(
            f"{path}: imports {', '.join(bad)}; a submission's model source may import only "
            f"torch, numpy, Pillow and the standard library")
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    if builder not in defined:
        raise SubmissionError(f"{path}: defines no top-level {builder}()")


def requirements_text() -> str:
    """The ``requirements.txt`` of a solution: one range per package, e.g. ``torch>=2.2,<3``."""
    return "\n".join(REQUIREMENTS_LINES) + "\n"


def postprocess_sources(steps, taken: tuple[str, ...] = ()) -> list[tuple[Path, dict]]:
    """Per post-processing step (anything with ``name`` and a ``source`` = (file, function,
    kwargs), e.g. :class:`cpx.eval.postprocess.PostStep`) its checked standalone file and its
    ``model.json`` entry ``{"module", "function", "kwargs"}``.

    :raises SubmissionError: a step without a standalone source, or one that imports more than
        a solution may, or whose module name would clash with ``taken`` or ``run``.
    """
    out = []
    for step in steps:
        source = getattr(step, "source", None)
        if not source:
            raise SubmissionError(f"post-processor {step.name!r} has no standalone source (cpx_source), so "
                                  f"solution/run.py could not repeat it; package without --post {step.name}")
        path, function, kwargs = source
        path = Path(path)
        if not path.is_file():
            raise SubmissionError(f"post-processor {step.name!r}: source file {path} does not exist")
        check_standalone(path.read_text(), path, function)
        module = path.stem
        if not module.isidentifier() or module in (*taken, "run", "model"):
            raise SubmissionError(f"post-processor {step.name!r}: its module name {module!r} cannot sit beside "
                                  "run.py and the model's module")
        out.append((path, {"module": module, "function": function, "kwargs": kwargs}))
    return out


def export_solution(model: torch.nn.Module, dest: os.PathLike, competition: Competition, *,
                    image_size: int, tta: Sequence[str] = (), scales: Sequence[float] = (1.0,),
                    channels_last: bool = True, model_name: str = "",
                    logit_offsets: Optional[Sequence[float]] = None, postprocess=(), batch_size: int = 1,
                    tile: Optional[int] = None) -> list[str]:
    """Write a standalone solution for ``model`` into the folder ``dest``: its ``run.py``
    predicts exactly as :class:`cpx.eval.predict.Predictor` with one member, the canvas side
    ``image_size`` (pixels), the TTA views ``tta`` ("flip", "scale") and the ``scales`` a
    "scale" view uses, the per-class ``logit_offsets`` (``cpx calibrate``), the ``postprocess``
    steps (see :func:`postprocess_sources`), sliding windows of ``tile`` pixels when given,
    and images of one size in batches of ``batch_size`` (as cpx predicted them), and writes
    masks as the competition stores them (its value map, mode and palette).

    Returns the names of the files written (relative to ``dest``).

    :raises SubmissionError: the model or a post-processing step has no shippable source.
    """
    src = model_source(model, model_name)
    post = postprocess_sources(postprocess, taken=(src.module_name,))
    fmt = competition.submission.solution or Solution()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    module_file = f"{src.module_name}.py"
    suffixes = list(dict.fromkeys([*(s.lower() for s in competition.layout.image_suffixes),
                                   *IMAGE_SUFFIXES]))
    config = {
        "module": src.module_name,
        "builder": src.builder,
        "kwargs": src.kwargs,
        "image_size": int(image_size),
        "num_classes": competition.num_classes,
        "classes": list(competition.classes),
        "weights_key": fmt.weights_key,
        "weight_keys": list(accepted_weight_keys(fmt.weights_key)),
        "channels_last": bool(channels_last),
        "palette": competition.palette_bytes(),
        "tta": list(tta),
        "scales": [float(v) for v in scales],
        "flip_permutation": competition.flip_permutation(),
        "image_suffixes": suffixes,
        "mask_suffix": competition.layout.mask_suffix,
        "mask_name": competition.layout.mask_pattern or "{stem}" + competition.layout.mask_suffix,
        "mask_mode": competition.masks.mode,
        "channels": competition.channels,
        "batch_size": int(batch_size),
    }
    stored = MaskCodec(competition).encode(np.arange(competition.num_classes, dtype=np.uint8))
    if not np.array_equal(stored, np.arange(competition.num_classes)):
        config["mask_values"] = [int(v) for v in stored] + [0] * (256 - competition.num_classes)
    if tile is not None:
        config["tile"] = int(tile)
        config["tile_overlap"] = TILE_OVERLAP
    if logit_offsets is not None:
        config["logit_offsets"] = [float(v) for v in logit_offsets]
    if post:
        config["postprocess"] = [entry for _, entry in post]
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    runner = RUN_PY if fmt.weights_file == "ckpt.pth" else RUN_PY.replace('"ckpt.pth"', json.dumps(fmt.weights_file))

    atomic_write_text(dest / module_file, src.arch_file.read_text())
    atomic_write_text(dest / MODEL_JSON, json.dumps(config, indent=1) + "\n")
    atomic_torch_save({fmt.weights_key: state}, dest / fmt.weights_file)
    atomic_write_text(dest / fmt.runner, runner)
    atomic_write_text(dest / REQUIREMENTS, requirements_text())
    extra = sorted({f"{entry['module']}.py" for _, entry in post})
    for path, entry in post:
        atomic_write_text(dest / f"{entry['module']}.py", path.read_text())
    return sorted([module_file, MODEL_JSON, fmt.weights_file, fmt.runner, REQUIREMENTS, *extra])


def run_solution(solution_dir: os.PathLike, input_dir: os.PathLike, output_dir: os.PathLike, *,
                 runner: str = "run.py", weights: Optional[os.PathLike] = None,
                 device: str = "cpu", timeout: float = 1800) -> float:
    """Run a solution's runner in a fresh interpreter, as the organisers would; seconds taken.

    The working directory is the solution folder's parent and ``PYTHONPATH`` is cleared, so
    the runner cannot lean on anything outside its folder but the installed packages.
    """
    import time

    solution_dir = Path(solution_dir).resolve()
    cmd = [sys.executable, str(solution_dir / runner), "--input", str(input_dir),
           "--output", str(output_dir), "--device", device]
    if weights is not None:
        cmd += ["--weights", str(weights)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=solution_dir.parent, env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SubmissionError(f"{solution_dir / runner}: did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
        last = tail[-1] if tail else f"exit code {proc.returncode}"
        raise SubmissionError(f"{solution_dir / runner} failed (exit {proc.returncode}): {last}")
    return time.perf_counter() - start


def runner_mentions_arguments(source: str) -> list[str]:
    """The runner arguments the competition expects that ``source`` never mentions."""
    return [a for a in ("--input", "--output", "--weights")
            if not re.search(re.escape(a) + r"\b", source)]
