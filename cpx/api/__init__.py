"""The notebook API's day: train, validate, calibrate, package and rank, through the same core
functions the command line calls (:func:`cpx.train.run.train`,
:func:`cpx.eval.validate.validate_run`, :func:`cpx.eval.calibrate.calibrate_run`,
:func:`cpx.submit.package.package`, :func:`cpx.report.leaderboard.workspace_leaderboard`), so a
notebook and the shell record the same runs, validations and submissions in the same ledger.
Re-exported by :mod:`cpx`; nothing here prints.

May import: ``cpx.kernel``, ``cpx.runs``, ``cpx.eval``, ``cpx.train``, ``cpx.submit``,
``cpx.bundle``, ``cpx.report``. Never ``cpx.cli``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from cpx.eval.calibrate import CalibrationResult, calibrate_run
from cpx.eval.predict import parse_tta
from cpx.eval.validate import Evaluation, validate_run
from cpx.kernel.config import SHORTCUTS
from cpx.kernel.errors import ConfigError
from cpx.kernel.manager import PluginHost, get_host
from cpx.kernel.workspace import Workspace
from cpx.report.leaderboard import workspace_leaderboard
from cpx.runs.handle import RunHandle
from cpx.runs.handle import open_run as open_handle
from cpx.submit.package import PackageRequest, PackageResult
from cpx.submit.package import package as package_run
from cpx.train.run import TrainRequest, TrainResult
from cpx.train.run import train as train_run

PathLike = Union[str, "os.PathLike[str]"]
Views = Union[None, str, Sequence[str]]


@dataclass(repr=False)
class Run(RunHandle):
    """A recorded run, with the day's next steps on it: :meth:`validate`, :meth:`calibrate`,
    :meth:`package`. Everything a :class:`~cpx.runs.handle.RunHandle` has is here too
    (``id``, ``config``, ``history``, ``folder``, ``competition``, ``load_model``); ``row`` is
    the run's ledger row as it was when the handle was made (:meth:`refresh` re-reads it), and
    ``result`` the :class:`~cpx.train.run.TrainResult` when :func:`train` made it (how training
    stopped, the trackers' reports)."""

    workspace: Optional[Workspace] = None
    result: Optional[TrainResult] = None

    @property
    def name(self) -> str:
        return self.row.get("name") or self.id

    @property
    def status(self) -> Optional[str]:
        return self.row.get("status")

    @property
    def best_val_score(self) -> Optional[float]:
        """The best validation score while training, on the competition metric's scale."""
        return self.row.get("best_val_score")

    def refresh(self) -> "Run":
        """The run as the ledger has it now (after a validation or a package, say)."""
        return _open(self.id, self.workspace, result=self.result)

    def validate(self, tta: Views = (), *, checkpoint: str = "best", data: Optional[PathLike] = None,
                 post: Views = None, calibration: bool = True, tile: Optional[int] = None, record: bool = True,
                 device: str = "auto", precision: str = "auto", batch_size: int = 8) -> Evaluation:
        """``cpx validate``: the competition's metric on the run's validation images (or every
        labelled image of ``data``), recorded in the ledger unless ``record`` is off.

        :param tta: ``"flip"``, ``"scale"`` or both (``"flip,scale"``).
        :returns: an :class:`~cpx.eval.validate.Evaluation`: ``scores.score`` on the metric's
            scale, ``per_class()``, ``per_image``, ``warnings``, ``validation_id``.
        """
        post = ",".join(post) if isinstance(post, (list, tuple)) else post
        return validate_run(self.id, self._workspace(), get_host(), checkpoint=checkpoint, data=data,
                            tta=parse_tta(tta), record=record, batch_size=batch_size, device=device,
                            precision=precision, calibration=calibration, post=post, tile=tile)

    def calibrate(self, tta: Views = (), *, checkpoint: str = "best", store: bool = True, force: bool = False,
                  device: str = "auto", precision: str = "auto", batch_size: int = 8) -> CalibrationResult:
        """``cpx calibrate``: per-class logit offsets fitted on the validation images, their gain
        measured on held-out halves, stored with the run when that gain is positive (or
        ``force``); validate, predict and package then apply them."""
        return calibrate_run(self.id, self._workspace(), get_host(), checkpoint=checkpoint, tta=parse_tta(tta),
                             device=device, precision=precision, batch_size=batch_size, store=store, force=force)

    def package(self, name: str, **options: Any) -> PackageResult:
        """:func:`package` of this run."""
        return package(self, name, **options)

    def _workspace(self) -> Workspace:
        return self.workspace or Workspace.current()


def _open(ref: str, workspace: Optional[Workspace], host: Optional[PluginHost] = None,
          result: Optional[TrainResult] = None) -> Run:
    workspace = workspace or Workspace.current()
    handle = open_handle(ref, workspace, host or get_host())
    return Run(handle.row, handle.folder, handle.config, handle.competition, workspace=workspace, result=result)


def overrides_of(options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as config overrides: a shortcut of ``cpx train`` (``epochs``, ``lr``,
    ``image_size``, ``batch_size``, ``data``, ``competition``, ...), a key path with ``__`` for
    its dots (``model__options__depth=2``) or the dotted path itself (``**{"model.name": "unet"}``).

    :raises ConfigError: a path that names the same key twice.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        path = SHORTCUTS.get(key) or key.replace("__", ".")
        if path in out and out[path] != value:
            raise ConfigError(f"{path}: given twice ({key}={value!r} and {out[path]!r})")
        out[path] = value
    return out


def train(recipe: Optional[str] = None, *, name: Optional[str] = None, resume: Optional[str] = None,
          refit: Optional[str] = None, log_to: Union[str, Sequence[str]] = (), callbacks: Sequence[Any] = (),
          workspace: Optional[PathLike] = None, **overrides: Any) -> Run:
    """``cpx train``: train ``recipe`` (a name from ``cpx recipes`` or a YAML file) with
    ``overrides`` and record the run in the workspace's ledger; or continue run ``resume``, or
    retrain run ``refit`` on every labelled image.

    :param overrides: ``cpx train``'s shortcuts (``epochs=2``, ``lr=1e-3``, ``image_size=256``,
        ``data="data/"``, ``competition=...``) or any config key, with ``__`` for its dots
        (``model__name="unet"``, ``model__options={"depth": 2}``).
    :param log_to: trackers to log to live, ``NAME:TARGET`` (``"mlflow:sqlite:///mlruns.db"``,
        ``"tensorboard:tb"``), one or several.
    :param callbacks: training callbacks (:class:`cpx.train.loop.Callback`, or objects with
        ``on_epoch_end(trainer, record)`` and the like).
    :returns: the run as a :class:`Run` (``result`` says how training ended).
    :raises ConfigError: a recipe or override that does not validate (one line per field).
    :raises MissingDependency: a ``log_to`` tracker whose package is not installed.
    """
    ws = Workspace.current(workspace)
    request = TrainRequest(recipe=recipe, overrides=overrides_of(overrides), name=name, resume=resume, refit=refit,
                           command=f"cpx.train({recipe!r}, ...)" if recipe else "cpx.train(...)",
                           log_to=[log_to] if isinstance(log_to, str) else list(log_to))
    host = get_host()
    result = train_run(request, ws, host, callbacks=tuple(callbacks))
    return _open(result.run_id, ws, host, result=result)


def package(run: Union[str, RunHandle], name: str, *, tta: Views = (), test_dir: Optional[PathLike] = None,
            checkpoint: str = "best", post: Views = None, calibration: bool = True, tile: Optional[int] = None,
            device: str = "auto", yes: bool = False, allow_rule_break: bool = False, official: bool = True,
            workspace: Optional[PathLike] = None) -> PackageResult:
    """``cpx package``: predict the test images with ``run`` and write a verified submission zip
    ``submissions/submission-<name>_<metric><val score>.zip``, recorded in the ledger.

    :param yes: package the phase's last submission (or one past its limit) without asking;
        otherwise that refuses.
    :param official: run the organisers' scoring program once on the zip's layout first, when
        the workspace's profile names one (``cpx init --bundle``).
    :returns: a :class:`~cpx.submit.package.PackageResult` (``zip_path``, ``val_score``,
        ``check``, ``submission``: its ledger row).
    """
    ws = Workspace.current(workspace) if workspace is not None or not isinstance(run, Run) else run._workspace()
    host = get_host()
    posts = tuple(s for s in (post.split(",") if isinstance(post, str) else post or ()) if s)
    request = PackageRequest(run=run if isinstance(run, str) else run.id, name=name, tta=parse_tta(tta),
                             test_dir=str(test_dir) if test_dir is not None else None, checkpoint=checkpoint,
                             allow_rule_break=allow_rule_break, device=device, yes=yes, calibration=calibration,
                             post=posts, tile=tile)
    checker = None
    if official:
        from cpx.bundle.official import package_check

        checker = package_check(ws, host)
    return package_run(request, ws, host, official=checker)


def leaderboard(*, competition: Optional[str] = None, phase: Optional[str] = None, sort: str = "val",
                limit: Optional[int] = None, workspace: Optional[PathLike] = None) -> list[dict]:
    """``cpx leaderboard`` as plain rows (one dict per run or submission, best first; a list
    ``pandas.DataFrame`` takes as it is): ``rank``, ``label``, ``run_id``, ``submission``,
    ``val_score``, ``test_score`` (observed) or ``predicted`` (``value``, ``low``, ``high``),
    ``gap``, ``checkpoint``, ``best_epoch``, ``key_config``, ... on the competition metric's scale.

    :param sort: ``val``, ``test`` (observed, else predicted) or ``official``.
    """
    board = workspace_leaderboard(Workspace.current(workspace), get_host(), competition=competition, phase=phase,
                                  sort=sort, limit=limit)
    return [row.to_dict() for row in board.rows]


def open_run(ref: str, workspace: Optional[PathLike] = None) -> Run:
    """A recorded run by id, unique id prefix or name, as a :class:`Run`.

    :raises RunError: no such run, an ambiguous prefix, or a run without a readable config.
    """
    return _open(ref, Workspace.current(workspace))


__all__ = ["Run", "leaderboard", "open_run", "overrides_of", "package", "train"]
