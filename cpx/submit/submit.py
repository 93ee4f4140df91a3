"""``cpx submit`` as one core function: :func:`submit` reads a :class:`SubmitRequest`, decides
what it asks for (register a zip, upload it, record a score, mark the final one and put it on
the public leaderboard, keep a note) and returns a :class:`SubmitOutcome` for the command line
to render. Questions to the user (spending the last submission) go through a ``confirm``
callback, so the core never prompts.

Also the small lookups the Codabench commands share: the Codabench competition id, the cpx
competition whose rules apply, and a client with a token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from cpx.data.competition import Competition
from cpx.eval.metrics import create_metric
from cpx.kernel.errors import CodabenchError, ConfigError, CpxError, SubmissionError
from cpx.kernel.manager import PluginHost
from cpx.kernel.workspace import Workspace
from cpx.runs.competition import default_competition
from cpx.runs.ledger import Ledger
from cpx.submit import codabench as cb
from cpx.submit.codabench import Phase
from cpx.submit.submissions import (
    DEFAULT_PHASE,
    Budget,
    Recorded,
    Registered,
    UploadOutcome,
    connect_to_leaderboard,
    default_phase,
    final_not_best,
    mark_final,
    parse_score,
    phase_budget,
    phase_limits,
    record_score,
    register_submission,
    submission_report,
    upload_submission,
    used_in_phase,
)

# progress(text): one line about what is happening now (an upload's status changes)
Progress = Callable[[str], None]
# confirm(question) -> True to go on
Confirm = Callable[[str], bool]


@dataclass
class SubmitRequest:
    """The options of ``cpx submit NAME``, as given (strings where the user typed them)."""

    name: str
    record_score: Optional[str] = None
    # a leaderboard phase name, or with ``upload`` a Codabench phase id (digits)
    phase: Optional[str] = None
    note: Optional[str] = None
    replace: bool = False
    final: bool = False
    zip_path: Optional[str] = None
    run: Optional[str] = None
    val_score: Optional[str] = None
    test_dir: Optional[str] = None
    # a Codabench competition id with ``upload``, a cpx competition name with ``zip_path``
    competition: Optional[str] = None
    upload: bool = False
    wait: bool = False
    timeout: Optional[float] = None  # seconds; cb.WAIT_TIMEOUT when None
    poll: float = 2.0  # first polling interval in seconds
    url: Optional[str] = None
    # with upload: put it on the public leaderboard (``final`` does too)
    leaderboard: bool = False
    # spend the last submission without asking
    yes: bool = False


@dataclass
class SubmitOutcome:
    """What :func:`submit` did; ``failure`` is set when Codabench failed the submission (the
    command then exits non-zero after showing everything else)."""

    name: str
    phase: str
    submission: dict
    val_score: Optional[float] = None
    registered: Optional[Registered] = None
    upload: Optional[UploadOutcome] = None
    codabench_competition: Optional[int] = None
    url: Optional[str] = None
    recorded: Optional[Recorded] = None
    marked_final: bool = False
    note_kept: bool = False
    used: int = 0
    limit: Optional[int] = None
    failure: Optional[str] = None
    # the budget before an upload (ledger and server)
    budget: Optional[Budget] = None
    # what happened on Codabench's public leaderboard, when asked for
    leaderboard: Optional[str] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def left(self) -> Optional[int]:
        """Submissions left in the phase by the ledger's count; None without a known limit."""
        return None if self.limit is None else max(0, self.limit - self.used)


def submit(request: SubmitRequest, workspace: Workspace, host: PluginHost, *,
           progress: Optional[Progress] = None, confirm: Optional[Confirm] = None) -> SubmitOutcome:
    """Do what ``request`` asks for submission ``request.name``, in this order: register a zip
    (``zip_path``), keep a note, then upload, record a score, or mark it final; a final
    submission that is on Codabench is also put on the public leaderboard.

    Before an upload the budget is shown through ``progress``; when it is the last submission
    (or none is left) ``confirm(question)`` must say yes, unless ``request.yes``.

    :raises ConfigError: options that do not go together, or nothing to do.
    :raises SubmissionError: an unknown name, a bad score, a zip with problems (nothing is
        registered then), an upload refused or declined before it reached the server.
    :raises CodabenchError: the server refused or could not be reached.
    """
    label, phase_id = _check_options(request)
    name = request.name
    note = request.note
    with Ledger(workspace.ledger_path) as ledger:
        registered = None
        if request.zip_path:
            named = request.competition if request.competition and not request.competition.strip().isdigit() else None
            registered = register_submission(ledger, name, request.zip_path, workspace=workspace, host=host,
                                             competition=named, run=request.run, val_score=request.val_score,
                                             test_dir=request.test_dir, note=note, score=request.record_score)
            note = None
        sub = _known_submission(ledger, name)
        run_row = ledger.get_run(sub["run_id"]) if sub.get("run_id") else None
        # a registered zip was checked for a competition: its metric and rules apply
        comp = (host.competition(registered.check.competition) if registered
                else cpx_competition(host, workspace, run=run_row))
        if request.phase is None:
            label = default_phase(comp)  # a bundle's current phase, else "test"
        metric = comp.metric.name if comp else ""
        outcome = SubmitOutcome(name=name, phase=label, submission=sub, registered=registered,
                                val_score=sub.get("val_score"))

        if note is not None and request.record_score is None:
            ledger.update_submission(name, note=note)
            outcome.note_kept = not request.zip_path
        if request.upload:
            _upload(request, outcome, ledger, workspace, comp, label, phase_id, progress, confirm)
        elif request.record_score is not None:
            outcome.recorded = record_score(ledger, name, request.record_score, phase=label,
                                            replace=request.replace, note=note, final=request.final,
                                            metric=metric, competition=comp)
            if outcome.recorded.submission.get("val_score") is None:
                outcome.val_score = (run_row or {}).get("best_val_score")
        elif request.final:
            mark_final(ledger, name)
            outcome.marked_final = True
        if request.final and not request.upload:
            text, ok = _final_on_codabench(ledger.get_submission(name), request.url)
            if ok:
                outcome.leaderboard = text
            else:
                outcome.warnings.append(text)
        outcome.used = len(used_in_phase(ledger, label))
        outcome.limit = phase_limits(comp, label)[0]
        outcome.submission = ledger.get_submission(name)
        if comp is not None and comp.rules.only_final_counts and (request.final or request.record_score
                                                                  or request.upload):
            greater = create_metric(comp, host).greater_is_better
            report = submission_report(ledger, comp, label, greater_is_better=greater)
            warning = (final_not_best(report.rows, report.final, comp.name, metric=comp.metric.name,
                                      greater_is_better=greater) if report.final else None)
            outcome.warnings += [warning] if warning else []
    return outcome


def _upload(request: SubmitRequest, outcome: SubmitOutcome, ledger: Ledger, workspace: Workspace,
            comp: Optional[Competition], label: str, phase_id: Optional[int],
            progress: Optional[Progress], confirm: Optional[Confirm]) -> None:
    """Upload after showing the budget (ledger and server) and, for the last submission or
    when none is left, asking; fills in ``outcome``."""
    name = outcome.name
    cid = codabench_competition_id(request.competition, workspace)
    client = codabench_client(request.url)
    outcome.codabench_competition, outcome.url = cid, client.base_url
    if phase_id is None and comp is not None and comp.phase(label) is not None:
        phase_id = bundle_phase_id(client, cid, label)

    def before_upload(phase: Phase) -> None:
        outcome.budget = budget = phase_budget(ledger, comp, label, remote=phase)
        if progress:
            progress(f"budget: {budget.describe()}")
        warning = budget.warning()
        if warning and not request.yes:
            question = f"{warning}; upload {name} anyway?"
            if confirm is None or not confirm(question):
                raise SubmissionError(f"not uploaded: {warning} (--yes uploads without asking)")

    if progress:
        progress(f"uploading {name} to {client.base_url} (competition {cid})")
    timeout = cb.WAIT_TIMEOUT if request.timeout is None else request.timeout
    metric = comp.metric.name if comp else ""
    outcome.upload = upload_submission(
        ledger, name, client, cid, phase_id=phase_id, phase=label, wait=request.wait, timeout=timeout,
        initial_interval=request.poll, progress=progress, metric=metric,
        scale=float(comp.metric.scale) if comp else 1.0, final=request.final,
        leaderboard=request.leaderboard, before_upload=before_upload)
    if outcome.upload.on_leaderboard:
        outcome.leaderboard = outcome.upload.leaderboard
    elif outcome.upload.leaderboard:
        outcome.warnings.append(outcome.upload.leaderboard)
    if (outcome.upload.status or "").casefold() == "failed":
        detail = outcome.upload.detail
        outcome.failure = (f"Codabench failed submission {outcome.upload.codabench_id} of '{name}'"
                           + (f": {detail}" if detail else ""))


def _final_on_codabench(sub: dict, url: Optional[str]) -> tuple[str, bool]:
    """Make the final submission the public one on Codabench too; returns (what happened,
    whether it is on the leaderboard now). A failure here is a warning: the ledger's final
    mark stands."""
    if not sub.get("codabench_id"):
        return ("marked final in the ledger only: it was never uploaded "
                f"(`cpx submit {sub['name']} --upload --final` uploads it and adds it to the leaderboard)", False)
    try:
        client = cb.client_from_config(url)
        if not client.token:
            return (f"marked final in the ledger only: no Codabench token for {client.base_url}, so it was not "
                    f"added to the public leaderboard; {cb.token_hint(client.base_url)}", False)
        return connect_to_leaderboard(client, int(sub["codabench_id"]), status=sub.get("status"))
    except CodabenchError as exc:
        return f"marked final in the ledger only; not added to the Codabench leaderboard: {exc}", False


def _check_options(request: SubmitRequest) -> tuple[str, Optional[int]]:
    """Options that do not go together, refused before anything is read or written;
    returns (ledger phase label, Codabench phase id or None)."""
    upload = request.upload
    if request.record_score is not None and upload:
        raise ConfigError("--record-score and --upload: choose one (--upload --wait records the score itself)")
    if request.leaderboard and not upload:
        raise ConfigError("--leaderboard goes with --upload (--final adds an uploaded submission on its own)")
    if not (request.record_score is not None or upload or request.final or request.zip_path
            or request.note is not None):
        raise ConfigError(f"nothing to do for '{request.name}': give --record-score, --upload, --final, "
                          f"--zip or --note")
    if (request.wait or request.timeout is not None) and not upload:
        raise ConfigError("--wait and --timeout go with --upload")
    label, phase_id = split_phase(request.phase)
    if phase_id is not None and not upload:
        raise ConfigError(f"--phase {request.phase}: a Codabench phase id goes with --upload; "
                          f"name the leaderboard phase instead (e.g. test)")
    if not request.zip_path and (request.run or request.val_score is not None or request.test_dir):
        raise ConfigError("--run, --val-score and --test go with --zip")
    if request.record_score is not None:
        parse_score(request.record_score)  # a number, before anything is read
    return label, phase_id


def _known_submission(ledger: Ledger, name: str) -> dict:
    try:
        return ledger.get_submission(name)
    except SubmissionError:
        known = [s["name"] for s in ledger.list_submissions()][:8]
        raise SubmissionError(
            f"no submission named '{name}'"
            + (f" (known: {', '.join(known)})" if known else "")
            + "; package one with `cpx package` or register a zip with --zip PATH") from None


# --------------------------------------------------------------------------------------------
# Lookups the Codabench commands share


def bundle_phase_id(client: cb.CodabenchClient, competition_id: int, name: str) -> int:
    """The id of the Codabench phase called ``name`` (the phase the profile's bundle names).

    :raises CodabenchError: the competition has no phase of that name (its phases listed).
    """
    phases = client.phases(competition_id)
    for phase in phases:
        if phase.name.casefold() == name.casefold():
            return phase.id
    listing = ", ".join(f"{p.id} ({p.name})" for p in phases) or "none"
    raise CodabenchError(f"Codabench competition {competition_id} has no phase named {name!r}, the profile's current "
                         f"phase; its phases: {listing}; give --phase ID")



def split_phase(phase: Optional[str]) -> tuple[str, Optional[int]]:
    """``--phase``: a name labels scores in the ledger; a number picks a Codabench phase
    (whose scores are then filed under ``test``). Returns (label, Codabench phase id or None)."""
    if phase is None:
        return DEFAULT_PHASE, None
    phase = phase.strip()
    if not phase:
        raise ConfigError("--phase: empty")
    if phase.isdigit():
        return DEFAULT_PHASE, int(phase)
    return phase, None


def codabench_competition_id(value: Optional[str], workspace: Workspace) -> int:
    """The Codabench competition id: ``value``, else ``codabench_competition`` in cpx.yaml.

    :raises ConfigError: neither is given, or the value is not a number.
    """
    value = value or str(workspace.settings().get("codabench_competition") or "")
    if not value:
        raise ConfigError("--competition: give the Codabench competition id (the number in its URL), "
                          "or set codabench_competition in cpx.yaml")
    if not value.strip().isdigit():
        raise ConfigError(f"--competition: {value!r} is not a Codabench competition id (a number)")
    return int(value)


def cpx_competition(host: PluginHost, workspace: Workspace, name: Optional[str] = None,
                    run: Optional[dict] = None, parts: Optional[tuple[str, ...]] = None) -> Optional[Competition]:
    """The competition profile whose rules and metric apply: the named one, the run's, else
    :func:`~cpx.runs.competition.default_competition` (cpx.yaml's, the ledger's runs', the
    data folder's, the only registered one); None when that is ambiguous. ``parts``: what
    :meth:`~cpx.kernel.manager.PluginHost.competition` checks (default: metric and format).

    :raises UnknownComponent: ``name`` names no registered competition.
    """
    if name:
        return host.competition(name, parts)
    if run and run.get("competition"):
        try:
            return host.competition(run["competition"], parts)
        except CpxError:
            pass
    found = default_competition(workspace, host)
    try:
        return host.competition(found, parts) if found else None
    except CpxError:  # cpx.yaml names a competition no plugin registers
        return None


def codabench_client(url: Optional[str] = None, *, need_token: bool = False) -> cb.CodabenchClient:
    """A client for ``url`` (else the configured server) with the token meant for it.

    :raises CodabenchError: ``need_token`` and there is no token for that server.
    """
    client = cb.client_from_config(url)
    if need_token and not client.token:
        raise CodabenchError(f"no Codabench token for {client.base_url}; {cb.token_hint(client.base_url)}")
    return client


__all__ = ["SubmitOutcome", "SubmitRequest", "bundle_phase_id", "codabench_client",
           "codabench_competition_id", "cpx_competition", "split_phase", "submit"]
