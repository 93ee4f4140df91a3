"""The phase's submission budget and the listing of submissions with the final pick.

A submission *counts* against the phase's limit once it has been uploaded or scored in
that phase, unless Codabench failed or cancelled it (failed submissions do not count).
The *final* submission is the one marked with ``--final``, else the latest that counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from cpx.data.competition import Competition
from cpx.runs.ledger import Ledger
from cpx.submit.submissions.scores import DEFAULT_PHASE, main_score

NOT_COUNTED = ("failed", "cancelled")


def _counts(sub: dict, scored: bool) -> bool:
    if (sub.get("status") or "").casefold() in NOT_COUNTED:
        return False
    return bool(sub.get("uploaded")) or scored


def used_in_phase(ledger: Ledger, phase: str = DEFAULT_PHASE) -> list[str]:
    """Names of the submissions that count against ``phase``'s limit, oldest first."""
    out = []
    for sub in reversed(ledger.list_submissions(phase)):
        scored = sub.get("latest_score") is not None
        in_phase = scored or (sub.get("phase") or DEFAULT_PHASE) == phase
        if in_phase and _counts(sub, scored):
            out.append(sub["name"])
    return out


@dataclass
class SubmissionRow:
    name: str
    run_id: Optional[str]
    run_name: Optional[str]
    date: str
    val_f: Optional[float]
    test_f: Optional[float]
    gap: Optional[float]
    status: str
    score_source: Optional[str]
    counts: bool
    final: bool
    codabench_id: Optional[str]
    zip_path: Optional[str]
    note: Optional[str]


@dataclass
class SubmissionReport:
    phase: str
    rows: list[SubmissionRow]
    used: int
    limit: Optional[int]
    final: Optional[str]
    final_reason: Optional[str]  # "marked" or "latest"
    only_final_counts: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def left(self) -> Optional[int]:
        return None if self.limit is None else max(0, self.limit - self.used)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["left"] = self.left
        return out


def submission_report(ledger: Ledger, competition: Optional[Competition] = None,
                      phase: str = DEFAULT_PHASE) -> SubmissionReport:
    """Every submission with its val and test F, the phase's budget, and the final pick."""
    metric = competition.metric if competition else "fscore"
    rows: list[SubmissionRow] = []
    for sub in ledger.list_submissions(phase):
        score = main_score(ledger.scores_for(sub["name"]), phase, metric)
        test = score["score"] if score else None
        val = sub.get("val_score")
        if val is None:
            val = sub.get("run_best_val_f")
        in_phase = score is not None or (sub.get("phase") or DEFAULT_PHASE) == phase
        status = sub.get("status") or "packaged"
        if score is not None and status in ("packaged", "registered"):
            status = "scored"
        rows.append(SubmissionRow(
            name=sub["name"], run_id=sub.get("run_id"), run_name=sub.get("run_name"),
            date=(sub.get("uploaded_at") or sub.get("created_at") or "")[:16].replace("T", " "),
            val_f=val, test_f=test, gap=None if test is None or val is None else test - val,
            status=status, score_source=score["source"] if score else None,
            counts=in_phase and _counts(sub, score is not None), final=bool(sub.get("is_final")),
            codabench_id=sub.get("codabench_id"), zip_path=sub.get("zip_path"), note=sub.get("note")))

    counted = [r for r in rows if r.counts]
    marked = [r for r in rows if r.final]
    final, reason = None, None
    if marked:
        final, reason = marked[0].name, "marked"
    elif counted:
        final, reason = counted[0].name, "latest"  # rows are newest first
    for r in rows:
        r.final = r.name == final

    limit = competition.rules.submissions_per_phase if competition else None
    only_final = bool(competition and competition.rules.only_final_counts)
    warnings = []
    if limit is not None and len(counted) > limit:
        warnings.append(f"{len(counted)} submissions count in phase '{phase}', "
                        f"but {competition.name} allows {limit}")
    scored = [r for r in counted if r.test_f is not None]
    if only_final and final is not None and scored:
        best = max(scored, key=lambda r: r.test_f)
        mine = next(r for r in rows if r.name == final)
        if best.name != final and (mine.test_f is None or best.test_f > mine.test_f):
            shown = f"{mine.test_f:.4f}" if mine.test_f is not None else "unscored"
            warnings.append(
                f"only the final submission counts in {competition.name}, and the final one, "
                f"{final} ({shown}), is not your best: {best.name} ({best.test_f:.4f}); "
                f"choose it with `cpx submit {best.name} --final`")
    return SubmissionReport(phase=phase, rows=rows, used=len(counted), limit=limit, final=final,
                            final_reason=reason, only_final_counts=only_final, warnings=warnings)
