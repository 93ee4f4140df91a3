"""`cpx submit`, `cpx submissions`, `cpx leaderboard` and `cpx codabench ...`."""

import sys
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cpx.kernel.errors import CodabenchError, ConfigError, SubmissionError
from cpx.kernel.text import format_f, format_signed
from cpx.runs.ledger import Ledger
from cpx.submit import codabench as cb
from cpx.submit.submissions.scores import DEFAULT_PHASE

from . import _common
from ._common import console, print_json
from .options import CodabenchCompetition, CodabenchUrl, Json, Phase, Yes, with_help

app = typer.Typer()
codabench_app = typer.Typer(name="codabench", help="Log in to Codabench, check a competition's limits, sync scores.",
                            no_args_is_help=True)


def _cpx_competition(name: Optional[str] = None, run: Optional[dict] = None):
    from cpx.submit.submit import cpx_competition

    return cpx_competition(_common.host(), _common.workspace(), name, run)


def _codabench_competition(value: Optional[str]) -> int:
    from cpx.submit.submit import codabench_competition_id

    return codabench_competition_id(value, _common.workspace())


def _client(url: Optional[str]):
    from cpx.submit.submit import codabench_client

    return codabench_client(url, need_token=True)


@app.command("submit")
def submit_command(
    name: Annotated[str, typer.Argument(help="submission name (as given to `cpx package --name`)")],
    record_score_: Annotated[Optional[str], typer.Option(
        "--record-score", help="the score the leaderboard shows for it, on the competition's metric's "
                               "scale (0..1, or 0..100 where the profile says metric.scale: 100)")] = None,
    phase: with_help(Phase, "leaderboard phase the score belongs to (default: test); with --upload, a number "
                            "picks the Codabench phase id") = None,
    note: Annotated[Optional[str], typer.Option(help="a note kept with the submission")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="overwrite a score already recorded")] = False,
    final: Annotated[bool, typer.Option("--final", help="make this the final submission")] = False,
    zip_: Annotated[Optional[str], typer.Option(
        "--zip", help="register a zip made elsewhere (checked like `cpx package --check`)")] = None,
    run: Annotated[Optional[str], typer.Option(help="with --zip: the run it came from")] = None,
    val_score: Annotated[Optional[str], typer.Option(
        "--val-score", help="with --zip: its validation score")] = None,
    test: Annotated[Optional[str], typer.Option(
        "--test", help="with --zip: test images folder to compare the masks with")] = None,
    competition: with_help(CodabenchCompetition, "with --upload: Codabench competition id; with --zip: cpx "
                                                 "competition name") = None,
    upload: Annotated[bool, typer.Option("--upload", help="upload the zip to Codabench")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="with --upload: wait for the score and record it")] = False,
    timeout: Annotated[Optional[float], typer.Option(
        help=f"with --wait: give up waiting after this many seconds (default {cb.WAIT_TIMEOUT:.0f})")] = None,
    poll: Annotated[float, typer.Option(help="with --wait: first polling interval in seconds "
                                             "(doubles up to 30)")] = 2.0,
    url: CodabenchUrl = None,
    leaderboard: Annotated[bool, typer.Option(
        "--leaderboard", help="with --upload: put it on the public leaderboard (--final does too)")] = False,
    yes: Yes = False,
    json_: Json = False,
):
    """Record a leaderboard score, register a hand-made zip, upload to Codabench, or mark the final one
    (which also puts an uploaded one on Codabench's public leaderboard)."""
    from cpx.submit.submit import SubmitRequest, submit

    request = SubmitRequest(name=name, record_score=record_score_, phase=phase, note=note, replace=replace,
                            final=final, zip_path=zip_, run=run, val_score=val_score, test_dir=test,
                            competition=competition, upload=upload, wait=wait, timeout=timeout,
                            poll=poll, url=url, leaderboard=leaderboard, yes=yes)
    say = None if json_ else _say
    outcome = submit(request, _common.workspace(), _common.host(), progress=say, confirm=_common.confirm)
    if json_:
        print_json(_outcome_json(outcome))
    else:
        _render_submit(outcome)
    if outcome.failure:
        raise SubmissionError(outcome.failure)


def _say(text: str) -> None:
    # the lines naming the upload and the budget come first; status changes follow, indented
    indent = "" if text.startswith(("uploading ", "budget: ")) else "  "
    console.print(escape(indent + text), highlight=False, soft_wrap=True)


def _outcome_json(o) -> dict:
    out: dict = {"name": o.name}
    if o.registered:
        out["registered"] = o.registered.submission
    if o.upload:
        u = o.upload
        out["upload"] = {"codabench_id": u.codabench_id, "status": u.status, "phase_id": u.phase_id,
                         "scores": u.scores, "score": u.main, "detail": u.detail}
    if o.recorded:
        out["score"] = o.recorded.score
        out["replaced"] = o.recorded.replaced
    if o.budget:
        out["budget"] = o.budget.to_dict()
    out["leaderboard"] = o.leaderboard
    out["warnings"] = o.warnings
    out["used"], out["limit"] = o.used, o.limit
    out["submission"] = o.submission
    return out


def _render_submit(o) -> None:
    name = o.name
    if o.registered:
        sub, key = o.registered.submission, o.registered.check.weights_key
        weights = f", weights under '{escape(key)}'" if key else ""
        console.print(f"registered [bold]{escape(name)}[/]: {escape(sub['zip_path'])} "
                      f"(sha256 {sub['zip_sha256'][:12]}…{weights}, checked: no problems)", highlight=False,
                      soft_wrap=True)
        _common.warn(o.registered.notes, label="note")
    if o.upload:
        u = o.upload
        console.print(escape(f"Codabench submission {u.codabench_id}: {u.status}"
                             + (f" ({u.detail})" if u.detail else "")), highlight=False)
        if u.main is not None:
            _print_recorded(name, o.phase, u.main, o.val_score, "codabench")
        elif not o.upload.status or o.upload.status.casefold() not in ("finished", "failed", "cancelled"):
            console.print(f"  check later with `cpx codabench sync --competition {o.codabench_competition}`",
                          highlight=False)
        _common.warn(u.messages, label="note")
    elif o.recorded:
        rec = o.recorded
        _print_recorded(name, o.phase, rec.score["score"], o.val_score, "manual", rec.replaced)
        _common.warn(rec.warnings)
    elif o.marked_final:
        console.print(f"[bold]{escape(name)}[/] is now the final submission")
    elif o.note_kept:
        console.print(f"note kept with {escape(name)}", highlight=False)
    if o.leaderboard:
        console.print(escape(o.leaderboard), highlight=False)
    _common.warn(o.warnings)
    if o.limit:
        console.print(f"phase {o.phase}: {o.used} of {o.limit} submissions used, {o.left} left",
                      highlight=False)


def _print_recorded(name, phase, score, val, source, replaced=None):
    gap = f", gap {score - val:+.4f} vs val {val:.4f}" if val is not None else ""
    was = f" (was {replaced:.4f})" if replaced is not None else ""
    console.print(f"recorded {escape(phase)} score [bold]{score:.4f}[/] for {escape(name)}{was} "
                  f"[dim]({source})[/]{gap}", highlight=False)


@app.command("submissions")
def submissions_command(
    phase: Phase = None,
    competition: Annotated[Optional[str], typer.Option(help="competition whose rules apply")] = None,
    json_: Json = False,
):
    """List submissions with their validation and test scores, the phase's budget, and the final one."""
    from cpx.submit.submissions import default_phase, submission_report

    comp = _cpx_competition(competition)
    with Ledger(_common.workspace().ledger_path) as ledger:
        report = submission_report(ledger, comp, phase or default_phase(comp))
    if json_:
        print_json(report.to_dict())
    else:
        _render_submissions(report, comp.metric.name if comp else "score")


def _render_submissions(report, m: str) -> None:
    table = Table(title=f"submissions ({len(report.rows)})")
    for col in ("name", "run", "date", f"val {m}", f"test {m}", "gap", "status", ""):
        table.add_column(col, justify="right" if col in (f"val {m}", f"test {m}", "gap") else "left",
                         no_wrap=col in ("name", "date"))
    for r in report.rows:
        status = escape(r.status) + ("" if r.counts else " [dim](not counted)[/]")
        table.add_row(escape(r.name), escape(r.run_name or r.run_id or "-"), r.date, format_f(r.val_score),
                      format_f(r.test_score), format_signed(r.gap), status,
                      "[bold green]final[/]" if r.final else "")
    console.print(table)
    if report.limit is not None:
        console.print(f"phase {report.phase}: {report.used} of {report.limit} submissions used, "
                      f"{report.left} left", highlight=False)
    else:
        console.print(f"phase {report.phase}: {report.used} submissions used (no limit known)", highlight=False)
    if report.final:
        why = "marked with --final" if report.final_reason == "marked" else "the latest; mark another with --final"
        counts = "only the final submission counts" if report.only_final_counts else "your best score counts"
        console.print(f"final: [bold]{escape(report.final)}[/] ({why}); {counts}", highlight=False)
    _common.warn(report.warnings)


@app.command("leaderboard")
def leaderboard_command(
    sort: Annotated[str, typer.Option("--sort", "--by", help="rank by val, test (observed, else predicted) or "
                                                             "official (the organisers' program's score of "
                                                             "`cpx validate --official`)")] = "val",
    limit: Annotated[Optional[int], typer.Option(help="show the top N")] = None,
    phase: Phase = None,
    competition: Annotated[Optional[str], typer.Option(
        help="only runs of this competition; with --remote: the Codabench competition id")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="a Markdown table")] = False,
    remote: Annotated[bool, typer.Option(
        "--remote", help="the public leaderboard on Codabench, your entries marked")] = False,
    url: with_help(CodabenchUrl, "with --remote: Codabench server") = None,
    json_: Json = False,
):
    """Rank runs and submissions by the competition's metric on validation or test, predicting
    the test score where none is known; with --remote, show Codabench's public leaderboard
    and your rank on it."""
    if remote:
        _remote_leaderboard(competition, phase or DEFAULT_PHASE, url, limit, json_)
        return
    from cpx.report.leaderboard import workspace_leaderboard

    # the named competition, else cpx.yaml's, else the latest run's
    board = workspace_leaderboard(_common.workspace(), _common.host(), competition=competition, phase=phase,
                                  sort=sort, limit=limit)
    if json_:
        print_json(board.to_dict())
    elif markdown:
        print(board.to_markdown(), end="")
    else:
        _render_leaderboard(board, sort)


def _render_leaderboard(board, sort: str) -> None:
    from cpx.report.leaderboard import format_test_score, run_checkpoint

    shown = f"{len(board.rows)} of {board.total}" if len(board.rows) < board.total else str(board.total)
    m = board.metric
    official = sort == "official" or any(r.official_score is not None for r in board.rows)
    by = f"official {board.official_column}" if sort == "official" else f"{sort} {m}"
    table = Table(title=f"leaderboard by {by} ({shown})")
    columns = ["#", "model", f"val {m}", *([f"official {board.official_column}"] if official else []),
               f"test {m}", "gap", "run / checkpoint", "best ep", "key config"]
    for col in columns:
        right = col in ("#", f"val {m}", "gap", "best ep") or col.startswith("official")
        table.add_column(col, justify="right" if right else "left", overflow="fold",
                         no_wrap=col in ("#", f"val {m}", "gap"))
    for r in board.rows:
        test = escape(format_test_score(r))
        if r.test_score is None and r.predicted is not None:
            test = f"[italic]{test}[/]"
        kind = f" [dim]({r.kind})[/]" if r.kind and r.kind != "train" else ""
        cells = [str(r.rank), escape(r.label) + kind, format_f(r.val_score),
                 *([format_f(r.official_score)] if official else []), test, format_signed(r.gap),
                 escape(run_checkpoint(r)), str(r.best_epoch or "-"), escape(r.key_config) or "-"]
        table.add_row(*cells)
    console.print(table)
    console.print(escape(board.model.describe()), style="dim", highlight=False)


def _remote_leaderboard(competition, phase, url, limit, json_) -> None:
    from cpx.submit.submissions import remote_leaderboard
    from cpx.submit.submit import split_phase

    if limit is not None and limit < 1:
        raise ConfigError("--limit: at least 1")
    _, phase_id = split_phase(phase)
    cid = _codabench_competition(competition)
    client = _client(url)
    with Ledger(_common.workspace().ledger_path) as ledger:
        board = remote_leaderboard(ledger, client, cid, phase_id=phase_id)
    if json_:
        print_json(board.to_dict())
        return
    entries = board.board.entries
    mine = [e for e in entries if e.mine]
    shown = entries[:limit] if limit else entries
    # your best entry stays in view even below the limit
    shown += [e for e in mine if e not in shown][:1]
    table = Table(title=escape(f"{board.board.title}: Codabench phase {board.phase.id} ({board.phase.name}), "
                               f"competition {cid}"))
    table.add_column("#", justify="right")
    table.add_column("participant")
    for col in board.board.columns:
        table.add_column(escape(col.title), justify="right")
    table.add_column("entries", justify="right")
    for e in shown:
        who = f"[bold green]{escape(e.owner)} (you)[/]" if e.mine else escape(e.owner)
        table.add_row(str(e.rank), who, *[format_f(e.scores.get(c.key)) for c in board.board.columns],
                      str(e.entries) if e.entries is not None else "-")
    console.print(table)
    if board.my_rank is not None:
        console.print(f"your rank: {board.my_rank} of {len(entries)}", highlight=False)
    else:
        console.print(f"you are not on this leaderboard ({len(entries)} entries); "
                      f"`cpx submit NAME --final` adds an uploaded submission", highlight=False)


# -- Codabench -----------------------------------------------------------------------------------


@codabench_app.command("login")
def login_command(
    url: with_help(CodabenchUrl, f"server (default {cb.DEFAULT_URL})") = None,
    username: Annotated[Optional[str], typer.Option(help="Codabench user name")] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="read the password from standard input")] = False,
    allow_http: Annotated[bool, typer.Option(
        "--allow-http", help="accept a plain http:// server that is not this machine (the password and "
                             "token travel unencrypted); remembered for that server only")] = False,
):
    """Trade your user name (or e-mail) and password for an API token, stored readable by you only."""
    if not username:
        stored = cb.load_credentials(check_mode=False)
        username = typer.prompt("Codabench user name or e-mail", default=stored.get("username") or None)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise CodabenchError("--password-stdin: nothing on standard input")
    else:
        password = typer.prompt("Codabench password", hide_input=True)
    path = cb.login(username, password, url, allow_http=allow_http)
    stored = cb.load_credentials(path)
    who = stored.get("username")
    console.print(escape(f"logged in to {stored['url']} as {who or username}; token stored in {path}"),
                  highlight=False)
    if not who:
        _common.warn(["the server did not say your username, so `cpx codabench sync` cannot tell your "
                      "submissions from others'; log in with your username"])


@codabench_app.command("logout")
def logout_command():
    """Forget the stored token."""
    path = cb.config_path()
    if cb.forget_credentials():
        console.print(f"token removed ({path})", highlight=False)
    else:
        console.print(f"no stored token ({path})", highlight=False)


@codabench_app.command("status")
def status_command(
    competition: CodabenchCompetition = None,
    url: CodabenchUrl = None,
    json_: Json = False,
):
    """The competition's phases, your submission limits, and whether you can submit now."""
    cid = _codabench_competition(competition)
    client = _client(url)
    rows = []
    for p in client.phases(cid):
        can, reason = client.can_make_submission(p.id) if p.is_current else (None, None)
        rows.append({"id": p.id, "name": p.name, "status": p.status, "limits": p.limits_text(),
                     "max_per_day": p.max_submissions_per_day, "used_today": p.used_submissions_per_day,
                     "max_total": p.max_submissions_per_person, "used_total": p.used_submissions_per_person,
                     "can_make_submission": can, "reason": reason})
    who = cb.stored_username(client.base_url)
    if json_:
        print_json({"url": client.base_url, "competition": cid, "username": who, "phases": rows})
        return
    table = Table(title=f"Codabench competition {cid} at {client.base_url}" + (f" ({who})" if who else ""))
    for col in ("phase", "name", "status", "used / limits", "can submit"):
        table.add_column(col)
    for r in rows:
        can = "-" if r["can_make_submission"] is None else (
            "[green]yes[/]" if r["can_make_submission"] else f"[red]no[/] {escape(r['reason'] or '')}")
        table.add_row(str(r["id"]), escape(r["name"]), escape(r["status"] or "?"), r["limits"] or "-", can)
    console.print(table)


@codabench_app.command("sync")
def sync_command(
    competition: CodabenchCompetition = None,
    phase: Annotated[Optional[int], typer.Option(help="Codabench phase id (default: the current one)")] = None,
    label: Annotated[str, typer.Option(help="leaderboard phase the scores are filed under")] = DEFAULT_PHASE,
    url: CodabenchUrl = None,
    json_: Json = False,
):
    """Match your Codabench submissions to the ledger by id and fill in missing scores."""
    from cpx.submit.submissions import sync_submissions

    cid = _codabench_competition(competition)
    client = _client(url)
    with Ledger(_common.workspace().ledger_path) as ledger:
        comp = _cpx_competition()
        report = sync_submissions(ledger, client, cid, phase_id=phase, phase=label,
                                  metric=comp.metric.name if comp else "",
                                  scale=float(comp.metric.scale) if comp else 1.0)
    if json_:
        print_json(report.to_dict())
    else:
        _render_sync(report, label)


def _render_sync(report, label: str) -> None:
    console.print(escape(f"phase {report.phase_id} ({report.phase_name}): {report.remote} submission(s) "
                         f"on Codabench"), highlight=False)
    for name, score in report.filled:
        console.print(f"  recorded {escape(label)} score [bold]{score:.4f}[/] for {escape(name)} (codabench)",
                      highlight=False)
    for name, status in report.updated:
        console.print(escape(f"  {name}: {status}"), highlight=False)
    for item in report.unknown:
        score = f", {item['score']:.4f}" if item.get("score") is not None else ""
        console.print(escape(f"  not in the ledger: Codabench submission {item['id']} ({item['status']}{score}); "
                             f"register its zip with `cpx submit NAME --zip PATH`"), highlight=False)
    _common.warn(report.messages, label="note")
    if not (report.filled or report.updated or report.unknown):
        console.print("  nothing new", highlight=False)
