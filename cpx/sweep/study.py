"""The Optuna side of a sweep: storage, study, sampler and pruner, and the bookkeeping that makes
several workers share one study safely.

Storage
    An SQLite file in the workspace by default (``experiments/sweeps/optuna.db``); any URL that
    Optuna's RDB storage takes (``postgresql://...``); or Optuna's journal file, for a shared file
    system without working ``fcntl`` locks (``journal:PATH``, or a path ending ``.log``).

Slots
    A grid has one slot per cell and seed, a search one per trial. Optuna gives the first trials
    their grid cell by trial number, and trial numbers are unique in the storage, so workers do not
    draw the same cell. A trial asked for when every slot is taken (two workers raced for the last
    one) is *surplus*: it is told failed at once, marked ``cpx:surplus``, and never trained.

Failures
    A trial whose process died is found either by its heartbeat (Optuna's, on RDB storages; a user
    attribute on journal files) or, on the same machine, because its process is gone. It is marked
    failed and retried once through Optuna's retry callback; the retry resumes the dead trial's run
    from its ``last.pt`` when that run is in this workspace. A trial stopped by Ctrl-C is queued
    again without using up its retry.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from cpx.kernel.errors import ConfigError, RunError
from cpx.sweep.spec import SweepSpec

SPEC_ATTR = "cpx:spec"
RUN_ATTR = "cpx:run_id"
HOST_ATTR = "cpx:host"
PID_ATTR = "cpx:pid"
BEAT_ATTR = "cpx:heartbeat"
SURPLUS_ATTR = "cpx:surplus"
INTERRUPTED_ATTR = "cpx:interrupted"
MAX_RETRY = 1
HEARTBEAT_SECONDS = 30
# journal heartbeats are written by cpx, RDB ones by Optuna; both count as stale after this many beats
GRACE_BEATS = 4


def quiet_optuna() -> None:
    # cpx renders its own progress; Optuna's per-trial INFO lines and its warning that a grid
    # point is re-evaluated (cpx discards such surplus trials unrun) would only confuse it
    optuna.logging.set_verbosity(logging.ERROR)
    # cpx beats for trials itself (ask-and-tell has no optimize loop), and the few experimental
    # functions it uses (retry callbacks, fail_stale_trials) are stable enough for it
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_storage(workspace_experiments: Path) -> str:
    path = Path(workspace_experiments) / "sweeps" / "optuna.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def public_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, fit to be stored or printed."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", url)


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or url.endswith((".log", ".jsonl", ".journal"))


def _retry_callback(max_retry: int):
    cls = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    return cls(max_retry=max_retry)


def open_storage(url: str, heartbeat: int = HEARTBEAT_SECONDS):
    """An Optuna storage for ``url`` (see the module docstring)."""
    quiet_optuna()
    if is_journal(url):
        path = Path(url[len("journal:"):] if url.startswith("journal:") else url).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        journal = optuna.storages.journal if hasattr(optuna.storages, "journal") else None
        backend_cls = getattr(journal, "JournalFileBackend", None) or optuna.storages.JournalFileStorage
        return optuna.storages.JournalStorage(backend_cls(str(path)))
    kwargs: dict[str, Any] = {"heartbeat_interval": heartbeat, "grace_period": heartbeat * GRACE_BEATS}
    params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params else "failed_trial_callback"
    kwargs[name] = _retry_callback(MAX_RETRY)
    if url.startswith("sqlite"):
        # several workers write one file: wait for the lock instead of failing at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    # workers started together race to create the schema: the loser's insert of the schema
    # version fails, and a second look finds the tables made
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:  # a bad URL, a missing database driver, or that race
            if attempt == 4 or type(exc).__name__ not in ("IntegrityError", "OperationalError"):
                raise ConfigError(f"--storage {url}: {type(exc).__name__}: {exc}") from None
            time.sleep(0.2 * (attempt + 1))


def create_sampler(spec: SweepSpec):
    if spec.mode == "grid":
        # the same seed in every worker: the grid is shuffled the same way, so trial number k is
        # the same cell for all of them
        return optuna.samplers.GridSampler(spec.grid(), seed=0)
    return optuna.samplers.TPESampler(n_startup_trials=max(2, min(10, (spec.trials or 10) // 3)))


def create_pruner(spec: SweepSpec):
    if not spec.prune:
        return optuna.pruners.NopPruner()
    # compare against at least a few finished trials, and never judge a trial by its first epoch
    return optuna.pruners.MedianPruner(n_startup_trials=min(4, max(1, spec.total // 4)), n_warmup_steps=1)


def open_study(storage, name: str, spec: Optional[SweepSpec], wait: float = 30.0) -> tuple[optuna.Study, SweepSpec]:
    """Create the study ``name`` for ``spec``, or load it (and its spec, when ``spec`` is None).

    A study of that name holding another sweep is an error; a search whose ``trials`` changed
    takes the new count.
    """
    quiet_optuna()
    if spec is not None:
        try:
            study = optuna.create_study(storage=storage, study_name=name, direction=spec.direction,
                                        sampler=create_sampler(spec), pruner=create_pruner(spec))
            study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
            return study, spec
        except optuna.exceptions.DuplicatedStudyError:
            pass
    try:
        probe = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise RunError(f"no study named '{name}' in this storage; start it with cpx sweep RECIPE --grid/--search "
                       "... --study NAME") from None
    # the creator stores the spec right after creating the study: a worker may get here first
    deadline = time.monotonic() + wait
    while SPEC_ATTR not in probe.user_attrs and time.monotonic() < deadline:
        time.sleep(0.2)
        probe = optuna.load_study(study_name=name, storage=storage)
    if SPEC_ATTR not in probe.user_attrs:
        raise RunError(f"study '{name}' was not made by cpx sweep (it has no {SPEC_ATTR} attribute)")
    stored = SweepSpec.model_validate(probe.user_attrs[SPEC_ATTR])
    if spec is not None:
        if stored.identity() != spec.identity():
            raise RunError(f"study '{name}' holds another sweep ({stored.describe()}); choose another --study")
        changes = stored.config_changes(spec)
        if changes:  # one study would hold two configs, and its "effects" would be the edit
            raise RunError(f"study '{name}' started from recipe {spec.recipe} as it was then; it has changed since "
                           f"({'; '.join(changes)}): restore it, or start another study with --study NEW")
        if stored.base_config is None and spec.base_config is not None:
            probe.set_user_attr(SPEC_ATTR, {**stored.model_dump(mode="json"), "base_config": spec.base_config})
        if spec.trials != stored.trials or spec.prune != stored.prune:
            probe.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
            stored = spec
    study = optuna.load_study(study_name=name, storage=storage, sampler=create_sampler(stored),
                              pruner=create_pruner(stored))
    return study, stored


# ---------------------------------------------------------------- slots


@dataclass
class Slot:
    key: Any
    attempts: list[FrozenTrial] = field(default_factory=list)

    @property
    def state(self) -> str:
        states = {t.state for t in self.attempts}
        for state, label in ((TrialState.COMPLETE, "complete"), (TrialState.PRUNED, "pruned"),
                             (TrialState.RUNNING, "running"), (TrialState.WAITING, "waiting")):
            if state in states:
                return label
        return "failed"

    @property
    def final(self) -> Optional[FrozenTrial]:
        """The attempt that counts: the complete or pruned one, else the latest."""
        for t in self.attempts:
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
                return t
        return max(self.attempts, key=lambda t: t.number) if self.attempts else None


def origin(trial: FrozenTrial) -> int:
    """The number of the first attempt of the trial's slot."""
    return int(trial.system_attrs.get("failed_trial", trial.number))


def is_retry(trial: FrozenTrial) -> bool:
    return "failed_trial" in trial.system_attrs


def slots(trials: list[FrozenTrial], spec: SweepSpec) -> tuple[dict[Any, Slot], set[int]]:
    """The sweep's slots from the study's trials, and the numbers of surplus trials.

    A fresh trial owns its slot (its grid cell, or for a search one of the first ``trials``
    places) unless an earlier fresh trial owns it already; then it is surplus. Every worker
    computes the same answer from the same storage.
    """
    out: dict[Any, Slot] = {}
    surplus: set[int] = set()
    by_origin: dict[int, Any] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get(SURPLUS_ATTR):
            surplus.add(t.number)
            continue
        if is_retry(t):
            continue
        key = t.system_attrs.get("grid_id") if spec.mode == "grid" else len(out)
        if key is None or key in out or (spec.mode == "search" and len(out) >= spec.total):
            if key is None and spec.mode == "grid" and t.state == TrialState.RUNNING:
                continue  # asked a moment ago: the sampler has not given it a cell yet
            surplus.add(t.number)
            continue
        out[key] = Slot(key, [t])
        by_origin[t.number] = key
    for t in trials:
        if is_retry(t) and not t.user_attrs.get(SURPLUS_ATTR) and origin(t) in by_origin:
            out[by_origin[origin(t)]].attempts.append(t)
    return out, surplus


@dataclass
class Tally:
    total: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0
    unclaimed: int = 0
    best_value: Optional[float] = None
    best_trial: Optional[FrozenTrial] = None
    trial_seconds: list[float] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.complete + self.pruned + self.failed

    @property
    def left(self) -> int:
        """Slots no worker has started or that wait for a retry."""
        return self.unclaimed + self.waiting

    @property
    def eta_seconds(self) -> Optional[float]:
        if not self.trial_seconds:
            return None
        remaining = self.left + self.running
        if not remaining:
            return 0.0
        per = sum(self.trial_seconds) / len(self.trial_seconds)
        workers = max(1, self.running)
        return per * -(-remaining // workers)


def tally(study: optuna.Study, spec: SweepSpec) -> Tally:
    found, _ = slots(study.get_trials(deepcopy=False), spec)
    out = Tally(total=spec.total, unclaimed=max(0, spec.total - len(found)))
    for slot in found.values():
        state = slot.state
        setattr(out, state, getattr(out, state) + 1)
        final = slot.final
        if state == "complete" and final is not None and final.value is not None:
            if out.best_value is None or final.value > out.best_value:
                out.best_value, out.best_trial = final.value, final
        if state in ("complete", "pruned") and final is not None and final.datetime_start and final.datetime_complete:
            out.trial_seconds.append((final.datetime_complete - final.datetime_start).total_seconds())
    return out


# ---------------------------------------------------------------- failures


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_trials(study: optuna.Study, heartbeat: int = HEARTBEAT_SECONDS) -> list[FrozenTrial]:
    """Running trials whose process is gone (same machine) or, on a journal file, whose
    heartbeat is older than the grace period. (RDB storages: Optuna's own heartbeat.)"""
    host, me = socket.gethostname(), os.getpid()
    journal = isinstance(study._storage, optuna.storages.JournalStorage)
    now = time.time()
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get(PID_ATTR)
        if t.user_attrs.get(HOST_ATTR) == host and isinstance(pid, int) and pid != me and not _alive(pid):
            out.append(t)
            continue
        if journal:
            beat = t.user_attrs.get(BEAT_ATTR)
            if beat is None and t.datetime_start is not None:
                beat = t.datetime_start.timestamp()
            if beat is not None and now - float(beat) > heartbeat * GRACE_BEATS:
                out.append(t)
    return out


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, interrupted: bool = False) -> bool:
    """Mark ``trial`` failed (unless another worker did first) and queue its retry: through
    Optuna's retry callback, at most once, or for an interrupted trial as a fresh copy that does
    not use up the retry. Returns whether this call failed it."""
    storage = study._storage
    try:
        if trial.state != TrialState.FAIL and not storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
            return False
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    frozen = storage.get_trial(trial._trial_id)
    if interrupted:
        system = dict(frozen.system_attrs)
        system.setdefault("failed_trial", frozen.number)
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs={**frozen.user_attrs, INTERRUPTED_ATTR: frozen.number}, system_attrs=system))
    else:
        _retry_callback(MAX_RETRY)(study, frozen)
    return True


def recover(study: optuna.Study, heartbeat: int = HEARTBEAT_SECONDS) -> list[FrozenTrial]:
    """Fail and retry every stale trial (see :func:`stale_trials`); Optuna's own heartbeat check
    runs too on storages that have one. Returns the trials this call failed."""
    failed = [t for t in stale_trials(study, heartbeat) if fail_and_retry(study, t)]
    storages = optuna.storages
    if hasattr(storages, "fail_stale_trials"):
        storages.fail_stale_trials(study)
    return failed


def tell(study: optuna.Study, trial: optuna.Trial, **kwargs) -> None:
    """``study.tell``; the grid sampler's request to stop an optimize loop (there is none in
    ask-and-tell use) is ignored once the state is stored."""
    try:
        study.tell(trial, **kwargs)
    except RuntimeError as exc:
        if "Study.stop" not in str(exc):
            raise


def record_heartbeat(study: optuna.Study, trial_id: int) -> None:
    storage = study._storage
    if hasattr(storage, "record_heartbeat") and getattr(storage, "get_heartbeat_interval", lambda: None)():
        storage.record_heartbeat(trial_id)
    else:
        storage.set_trial_user_attr(trial_id, BEAT_ATTR, time.time())
