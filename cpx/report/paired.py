"""Two runs compared image by image from their recorded validations (no evaluation):
``cpx compare A B --stats`` and the report's one-factor comparisons.

Each run's validation is the latest ledger row of the requested checkpoint and TTA, on the run's
own validation list, that holds per-image scores. The test runs over the images both were scored on
(:func:`cpx.report.stats.paired_test`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cpx.kernel.errors import RunError
from cpx.report import stats
from cpx.runs.ledger import Ledger

OWN_LIST = "val_list"  # the ledger's ``data`` value for a run's own validation list


@dataclass
class PairedComparison:
    run_a: dict
    run_b: dict
    validation_a: dict
    validation_b: dict
    test: stats.PairedTest

    @property
    def label_a(self) -> str:
        return self.run_a.get("name") or self.run_a["id"]

    @property
    def label_b(self) -> str:
        return self.run_b.get("name") or self.run_b["id"]

    def to_dict(self) -> dict:
        return {"a": {"run": self.run_a["id"], "label": self.label_a, "validation": self.validation_a["id"],
                      "images": len(self.validation_a.get("per_image") or {})},
                "b": {"run": self.run_b["id"], "label": self.label_b, "validation": self.validation_b["id"],
                      "images": len(self.validation_b.get("per_image") or {})},
                "paired": self.test.to_dict()}


def recorded_validation(ledger: Ledger, run: dict, checkpoint: str = "best", tta: str = "none") -> Optional[dict]:
    """The run's latest plain validation of ``checkpoint`` with ``tta`` on its own list that holds
    per-image scores; None if there is none. Calibrated (offsets fitted on these very images, so
    in-sample) and post-processed validations are not plain, and never taken here."""
    for v in reversed(ledger.list_validations(run["id"])):
        if (v.get("per_image") and (v.get("checkpoint") or "best") == checkpoint
                and (v.get("tta") or "none") == tta and (v.get("data") or OWN_LIST) == OWN_LIST
                and not v.get("calibrated") and not v.get("post")):
            return v
    return None


def compare_recorded(ledger: Ledger, ref_a: str, ref_b: str, *, checkpoint: str = "best", tta: str = "none",
                     level: float = stats.DEFAULT_LEVEL, seed: int = 0) -> PairedComparison:
    """The paired per-image comparison of two runs from the ledger alone."""
    a, b = ledger.get_run(ref_a), ledger.get_run(ref_b)
    if a["id"] == b["id"]:
        raise RunError(f"{ref_a} and {ref_b} are the same run ({a['id']})")
    fa, fb = a.get("data_fingerprint"), b.get("data_fingerprint")
    if fa and fb and fa != fb:
        raise RunError(f"runs {a['id']} and {b['id']} were trained on different data; their validation images "
                       "are not the same images")
    found = []
    for run in (a, b):
        v = recorded_validation(ledger, run, checkpoint, tta)
        if v is None:
            raise RunError(f"run {run['id']} has no recorded per-image scores for checkpoint {checkpoint} with TTA "
                           f"{tta}; "
                           f"record one with `cpx validate {run.get('name') or run['id']}"
                           + (f" --tta {tta}`" if tta != "none" else "`"))
        found.append(v)
    try:
        test = stats.paired_test(found[0]["per_image"], found[1]["per_image"], level=level, seed=seed)
    except ValueError as exc:
        raise RunError(f"{a['id']} vs {b['id']}: {exc}") from None
    return PairedComparison(a, b, found[0], found[1], test)


def describe(test: stats.PairedTest) -> str:
    """``B − A +0.0167 (95% CI −0.0040..+0.0371) over 12 images, paired t p=0.108, Wilcoxon p=0.129: not significant``."""
    ci = f"{test.level * 100:g}% CI {test.low:+.4f}..{test.high:+.4f}" if test.low is not None else "no interval"
    return (f"B − A {test.diff:+.4f} ({ci}) over {test.n} images, paired t p={_p(test.t_p)}, "
            f"Wilcoxon p={_p(test.wilcoxon_p)}: {test.verdict}")


def _p(p: Optional[float]) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"
