"""The ``solution/`` folder of a submission that must carry its code and weights: a runner
taking ``--input``, ``--output`` and ``--weights``, a requirements file, and a checkpoint read
with ``torch.load(weights_only=True)`` (so it cannot run code) whose state_dict gives the
parameter count. Used by :mod:`cpx.submit.zipcheck`.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import torch

from cpx.data.competition import Competition
from cpx.runs.checkpoint import accepted_weight_keys
from cpx.submit.solution import runner_mentions_arguments
from cpx.submit.zipentries import READ_LIMIT, FileSource, Skipped, mib

if TYPE_CHECKING:
    from cpx.submit.checkreport import CheckReport

# Batch-norm statistics sit in a state_dict but are not trainable parameters.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def estimate_params(state: dict) -> int:
    """Trainable parameters a state_dict holds, leaving out batch-norm statistics."""
    return int(sum(v.numel() for k, v in state.items()
                   if isinstance(v, torch.Tensor) and not k.endswith(_BUFFER_SUFFIXES)
                   and v.is_floating_point()))


def check_solution(files: FileSource, competition: Competition, report: CheckReport) -> None:
    """Add to ``report`` every problem of the competition's solution folder in ``files`` (none
    asked for: nothing to check), and the weights' parameter count when no manifest gave one."""
    fmt = competition.submission.solution
    if fmt is None:
        return
    report.solution_required = True
    sol = fmt.folder + "/"
    report.solution_files = [n[len(sol):] for n in files.names if n.startswith(sol)]
    if not report.solution_files:
        report.add(sol, "no_solution", f"no {sol} folder; {competition.name} requires the code and "
                                       f"weights ({fmt.runner}, {fmt.weights_file})")
        return
    runner = sol + fmt.runner
    source = None
    if runner not in files.names:
        report.add(files.label(runner), "no_runner", f"missing: {competition.name} requires {fmt.runner} "
                                        f"taking --input, --output and --weights")
    else:
        try:
            source = files.read(runner, "text").decode("utf-8", errors="replace")
        except Skipped:
            if not files.skipped(runner):
                report.add(files.label(runner), "runner_too_large",
                           f"{mib(files.size(runner))}; a runner script is at most {mib(READ_LIMIT['text'])}")
    if source is not None:
        try:
            compile(source, runner, "exec")
        except SyntaxError as exc:
            report.add(files.label(runner), "runner_syntax", f"not valid Python ({exc.msg}, line {exc.lineno})")
        missing = runner_mentions_arguments(source)
        if missing:
            report.add(files.label(runner), "runner_arguments", f"never mentions {', '.join(missing)}; the "
                                                   f"organisers call it with --input, --output, --weights")
    if sol + "requirements.txt" not in files.names:
        report.add(sol + "requirements.txt", "no_requirements", "missing: list the packages run.py needs")
    weights = sol + fmt.weights_file
    if weights not in files.names:
        report.add(files.label(weights), "no_weights", f"missing: the weights, under the key '{fmt.weights_key}'")
        return
    try:
        data = files.read(weights, "weights")
    except Skipped:
        return  # too large: already a problem
    try:
        # weights_only: unpickling may rebuild tensors and plain containers, never run code
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        report.add(files.label(weights), "weights_unreadable",
                   f"torch.load(weights_only=True) cannot read it ({reason})")
        return
    accepted = accepted_weight_keys(fmt.weights_key)
    key = next((k for k in accepted if isinstance(state, dict) and k in state), None)
    if key is None:
        keys = ", ".join(map(str, list(state)[:6])) if isinstance(state, dict) else type(state).__name__
        report.add(files.label(weights), "no_weights_key",
                   f"no '{fmt.weights_key}' key (nor {', '.join(repr(k) for k in accepted[1:])}; "
                   f"found: {keys or 'nothing'})")
        return
    report.weights_key = key
    if key != fmt.weights_key:
        report.notes.append(f"{fmt.weights_file}: weights found under '{key}' (cpx package writes "
                            f"'{fmt.weights_key}'); the zip's own {fmt.runner} must load that key")
    weights_dict = state[key]
    if not isinstance(weights_dict, dict) or not weights_dict or not all(
            isinstance(v, torch.Tensor) for v in weights_dict.values()):
        report.add(files.label(weights), "bad_state_dict", f"'{key}' is not a mapping of names to tensors")
        return
    report.weights_params = estimate_params(weights_dict)
    if report.params is None:
        report.params = report.weights_params
        report.params_source = f"{fmt.weights_file} (excluding batch-norm statistics)"
    elif report.params != report.weights_params:
        # not a problem by itself: models may keep other buffers in their state_dict
        report.notes.append(f"{report.params_source} states {report.params:,} parameters; {fmt.weights_file} holds "
                            f"{report.weights_params:,} weights besides batch-norm statistics")
