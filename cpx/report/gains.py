"""What the evaluation-time ingredients gain, from the ledger and the runs' calibration files:
test-time augmentation, post-processing and calibrated logit offsets, each as a paired
per-image difference on the run's own validation images against the plain prediction of the
same checkpoint.

* TTA and post-processing: the latest validation with the ingredient against the latest plain
  one (``cpx validate RUN --tta flip``, ``cpx validate RUN --post ...``).
* Calibration: the cross-fitted scores ``cpx calibrate`` stores (each image scored with the
  offsets fitted on the other half of the images), so the gain is measured on images the
  offsets never saw. The calibrated validations in the ledger are in-sample and never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cpx.report import stats
from cpx.report.paired import OWN_LIST, recorded_validation
from cpx.runs.folder import run_folder
from cpx.runs.ledger import Ledger

CALIBRATION = "calibration"  # the Ref table of a run's calibration.json


@dataclass
class Gain:
    """One ingredient on one run: the paired per-image test of B (with it) against A (without),
    and where A's and B's per-image scores were read: ``(table, key, column, value)`` pairs."""

    run: dict
    ingredient: str
    test: stats.PairedTest
    sources: list[tuple[str, object, str, object]]


def _plain(v: dict, checkpoint: str = "best") -> bool:
    return ((v.get("checkpoint") or "best") == checkpoint and (v.get("data") or OWN_LIST) == OWN_LIST
            and bool(v.get("per_image")) and not v.get("calibrated"))


def run_gains(ledger: Ledger, runs_dir: Path, run: dict, level: float = stats.DEFAULT_LEVEL) -> list[Gain]:
    """The evaluation-time gains recorded for ``run`` (best checkpoint): every TTA, every
    post-processing, and the held-out calibration gain; none when nothing was measured."""
    out: list[Gain] = []
    plain = recorded_validation(ledger, run, "best", "none")
    validations = ledger.list_validations(run["id"])
    if plain is not None:
        latest: dict[tuple[str, str], dict] = {}
        for v in validations:
            if not _plain(v):
                continue
            tta, post = v.get("tta") or "none", v.get("post") or ""
            if tta != "none" and post:
                continue  # TTA and post-processing together: neither ingredient alone
            if tta != "none" or post:
                latest[(tta, post)] = v
        for (tta, post), v in sorted(latest.items()):
            try:
                test = stats.paired_test(plain["per_image"], v["per_image"], level=level)
            except ValueError:
                continue
            name = f"TTA {tta}" if tta != "none" else f"post-processing {post}"
            out.append(Gain(run, name, test, [("validations", plain["id"], "per_image", plain["per_image"]),
                                              ("validations", v["id"], "per_image", v["per_image"])]))
    spec = run_folder(run, runs_dir).read_calibration() or {}
    heldout = spec.get("heldout_per_image")
    if isinstance(heldout, dict) and len(heldout) >= 2:
        before = {k: float(v[0]) for k, v in heldout.items()}
        after = {k: float(v[1]) for k, v in heldout.items()}
        test = stats.paired_test(before, after, level=level)
        tta = spec.get("tta") or []
        name = "calibration, held out" + (f" (on TTA {'+'.join(tta)})" if tta else "")
        out.append(Gain(run, name, test, [(CALIBRATION, run["id"], "heldout_per_image", heldout)]))
    return out


def gains(ledger: Ledger, runs_dir: Path, runs: list[dict], level: float = stats.DEFAULT_LEVEL) -> list[Gain]:
    """:func:`run_gains` of each run, in the order given."""
    return [g for run in runs for g in run_gains(ledger, runs_dir, run, level)]


def calibration_cell(runs_dir: Path, run: dict, column: str) -> Optional[object]:
    """A value of a run's calibration.json (what a :data:`CALIBRATION` reference points at)."""
    return (run_folder(run, runs_dir).read_calibration() or {}).get(column)
