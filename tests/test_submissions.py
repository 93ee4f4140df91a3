"""Recording leaderboard scores, registering hand-made zips, listing submissions and the final pick."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cpx.cli import main
from cpx.data.competition import Competition, Rules
from cpx.kernel.hookspecs import hookimpl
from cpx.submit.submissions import main_score, submission_report, used_in_phase


def cpx(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def score_rows(ledger, name):
    return [(s["phase"], s["column_key"], s["score"], s["source"]) for s in ledger.scores_for(name)]


# ---------------------------------------------------------------- --record-score


def test_record_score_by_hand(ledger, capsys, packaged):
    packaged("v2", val=0.6889)
    code, out, err = cpx(capsys, "submit", "v2", "--record-score", "0.73", "--note", "TTA flip")

    assert code == 0, err
    assert "recorded test score 0.7300 for v2" in out
    assert "gap +0.0411" in out
    assert "1 of 10 submissions used, 9 left" in out
    assert score_rows(ledger, "v2") == [("test", "score", 0.73, "manual")]
    sub = ledger.get_submission("v2")
    assert sub["note"] == "TTA flip" and sub["phase"] == "test"


@pytest.mark.parametrize("value, message", [
    # checked against the scale of the competition's metric, with a hint for a percent
    ("1.5", "--record-score: '1.5' is outside 0..1, the scale of celebamask-mini's fscore (if the leaderboard "
            "prints percent, give 0.015, or set metric.scale: 100 in its profile)"),
    ("-0.1", "--record-score: '-0.1' is outside 0..1, the scale of celebamask-mini's fscore"),
    ("nan", "--record-score: 'nan' is not a finite number"),
    ("abc", "--record-score: 'abc' is not a number"),
])
def test_bad_scores_are_one_line_errors(ledger, capsys, value, message, packaged):
    packaged("v2")
    code, out, err = cpx(capsys, "submit", "v2", "--record-score", value)
    assert code == 2
    assert error_lines(err) == [f"error: {message}"]
    assert ledger.scores_for("v2") == []


def test_unknown_name_is_a_one_line_error(ledger, capsys, packaged):
    packaged("v2")
    code, _, err = cpx(capsys, "submit", "v9", "--record-score", "0.7")
    assert code == 2
    (line,) = error_lines(err)
    assert "no submission named 'v9' (known: v2)" in line


def test_double_recording_needs_replace(ledger, capsys, packaged):
    packaged("v2")
    assert cpx(capsys, "submit", "v2", "--record-score", "0.73")[0] == 0

    code, _, err = cpx(capsys, "submit", "v2", "--record-score", "0.74")
    assert code == 2
    (line,) = error_lines(err)
    assert "'v2' already has a test score 0.7300 (manual" in line and "use --replace" in line
    assert score_rows(ledger, "v2") == [("test", "score", 0.73, "manual")]

    code, out, err = cpx(capsys, "submit", "v2", "--record-score", "0.74", "--replace")
    assert code == 0, err
    assert "(was 0.7300)" in out
    assert score_rows(ledger, "v2") == [("test", "score", 0.74, "manual")]

    # another phase is another score
    assert cpx(capsys, "submit", "v2", "--record-score", "0.70", "--phase", "final")[0] == 0
    assert ("final", "score", 0.70, "manual") in score_rows(ledger, "v2")


def test_replace_overwrites_a_codabench_score_in_its_own_column(ledger, capsys, packaged):
    packaged("v2")
    ledger.record_score("v2", 0.72, column_key="fscore", source="codabench")
    code, _, err = cpx(capsys, "submit", "v2", "--record-score", "0.725")
    assert code == 2 and "already has a test score 0.7200 (codabench" in err
    assert cpx(capsys, "submit", "v2", "--record-score", "0.725", "--replace")[0] == 0
    assert score_rows(ledger, "v2") == [("test", "fscore", 0.725, "manual")]


def test_nothing_to_do_and_misplaced_options(ledger, capsys, packaged):
    packaged("v2")
    code, _, err = cpx(capsys, "submit", "v2")
    assert code == 2 and "nothing to do for 'v2'" in err
    code, _, err = cpx(capsys, "submit", "v2", "--record-score", "0.7", "--run", "r1")
    assert code == 2 and "--run, --val-score and --test go with --zip" in err
    code, _, err = cpx(capsys, "submit", "v2", "--record-score", "0.7", "--phase", "7")
    assert code == 2 and "Codabench phase id goes with --upload" in err


# ---------------------------------------------------------------- --zip


def hand_made_zip(path: Path, data_root: Path, competition, *, drop_first=False, with_solution=True) -> Path:
    """A submission zip as a competitor builds one by hand: masks, run.py, weights."""
    tests = sorted(competition.data_path(data_root, "test_images").glob("*.jpg"))
    with zipfile.ZipFile(path, "w") as zf:
        for i, image in enumerate(tests):
            if drop_first and i == 0:
                continue
            with Image.open(image) as im:
                w, h = im.size
            mask = Image.fromarray(np.full((h, w), i % competition.num_classes, dtype=np.uint8), mode="P")
            mask.putpalette(competition.palette_bytes())
            buf = io.BytesIO()
            mask.save(buf, format="PNG")
            zf.writestr(f"masks/{image.stem}.png", buf.getvalue())
        if with_solution:
            zf.writestr("solution/run.py", "import argparse\np = argparse.ArgumentParser()\n"
                        "p.add_argument('--input'); p.add_argument('--output'); p.add_argument('--weights')\n")
            zf.writestr("solution/requirements.txt", "torch\n")
            buf = io.BytesIO()
            torch.save({"state_dict": {"conv.weight": torch.zeros(4, 3, 1, 1)}}, buf)
            zf.writestr("solution/ckpt.pth", buf.getvalue())
    return path


def test_register_a_hand_made_zip(ledger, capsys, cpx_synthetic, cpx_host, tmp_path):
    comp = cpx_host.competition("celebamask-mini")
    run = ledger.add_run(name="old", competition=comp.name, status="completed", best_val_score=0.68)
    zip_path = hand_made_zip(tmp_path / "mine.zip", cpx_synthetic, comp)
    before = zip_path.read_bytes()
    test_dir = comp.data_path(cpx_synthetic, "test_images")

    code, out, err = cpx(capsys, "submit", "v1", "--zip", zip_path, "--run", "old", "--val-score", "0.70",
                         "--test", test_dir, "--record-score", "0.72")

    assert code == 0, err
    assert "registered v1" in out and "checked: no problems" in out
    assert "recorded test score 0.7200 for v1" in out
    sub = ledger.get_submission("v1")
    assert sub["zip_path"] == str(zip_path.resolve())
    assert sub["zip_sha256"] == hashlib.sha256(before).hexdigest()
    assert sub["size_bytes"] == len(before)
    assert sub["run_id"] == run["id"] and sub["val_score"] == 0.70 and sub["status"] == "registered"
    assert score_rows(ledger, "v1") == [("test", "score", 0.72, "manual")]
    assert zip_path.read_bytes() == before
    assert not (ledger.path.parent.parent / "submissions").exists(), "nothing is copied"


def test_a_zip_with_problems_is_refused_with_each_listed(ledger, capsys, cpx_synthetic, cpx_host, tmp_path):
    comp = cpx_host.competition("celebamask-mini")
    zip_path = hand_made_zip(tmp_path / "bad.zip", cpx_synthetic, comp, drop_first=True, with_solution=False)
    test_dir = comp.data_path(cpx_synthetic, "test_images")
    first = sorted(test_dir.glob("*.jpg"))[0].stem

    # no manifest, no runs in the ledger: with three competitions registered, cpx asks which
    code, out, err = cpx(capsys, "submit", "v1", "--zip", zip_path, "--test", test_dir, "--record-score", "0.7")
    assert code == 2 and error_lines(err)[0].startswith("error: --competition: choose one of celebamask-mini")

    code, out, err = cpx(capsys, "submit", "v1", "--zip", zip_path, "--test", test_dir, "--record-score", "0.7",
                         "--competition", "celebamask-mini")

    assert code == 2
    lines = error_lines(err)
    assert "2 problems; not registered" in lines[0]
    assert any(f"masks/{first}.png: missing" in line for line in lines[1:])
    assert any("no solution/ folder" in line for line in lines[1:])
    assert ledger.list_submissions() == []


def test_registering_a_taken_name_or_missing_zip(ledger, capsys, tmp_path, packaged):
    packaged("v2")
    code, _, err = cpx(capsys, "submit", "v2", "--zip", tmp_path / "nothing.zip")
    assert code == 2 and "no such file" in err
    (tmp_path / "x.zip").write_bytes(b"PK")
    code, _, err = cpx(capsys, "submit", "v2", "--zip", tmp_path / "x.zip")
    assert code == 2 and "a submission named 'v2' already exists" in err


# ---------------------------------------------------------------- listing and final


def test_listing_counts_used_submissions_and_picks_the_latest_as_final(ledger, capsys, packaged):
    packaged("v1", val=0.66, created_at="2026-01-01T10:00:00+00:00")
    packaged("v2", val=0.69, created_at="2026-01-02T10:00:00+00:00")
    packaged("v3", val=0.70, created_at="2026-01-03T10:00:00+00:00", uploaded=True,
             status="Failed", codabench_id="1003")
    packaged("v4", val=0.71, created_at="2026-01-04T10:00:00+00:00")  # packaged, never sent
    for name, score in (("v1", 0.70), ("v2", 0.73)):
        assert cpx(capsys, "submit", name, "--record-score", score)[0] == 0

    code, out, err = cpx(capsys, "submissions", "--json")
    assert code == 0, err
    report = json.loads(out)
    rows = {r["name"]: r for r in report["rows"]}
    assert [r["name"] for r in report["rows"]] == ["v4", "v3", "v2", "v1"]
    assert report["used"] == 2 and report["limit"] == 10 and report["left"] == 8
    assert rows["v2"]["gap"] == pytest.approx(0.04) and rows["v2"]["test_score"] == 0.73
    assert rows["v3"]["counts"] is False and rows["v3"]["status"] == "Failed"
    assert rows["v4"]["counts"] is False and rows["v4"]["status"] == "packaged"
    assert report["final"] == "v2" and report["final_reason"] == "latest"
    assert report["warnings"] == []

    code, out, _ = cpx(capsys, "submissions")
    assert "2 of 10 submissions used, 8 left" in out
    assert "final: v2 (the latest" in out

    assert cpx(capsys, "submit", "v1", "--final")[0] == 0
    report = submission_report(ledger, None)
    assert report.final == "v1" and report.final_reason == "marked"
    assert [r.name for r in report.rows if r.final] == ["v1"]
    assert ledger.get_submission("v1")["is_final"] and not ledger.get_submission("v2")["is_final"]


class _FinalOnly:
    @hookimpl
    def register_competitions(self, register):
        register("final-only", Competition(name="final-only", classes=("bg", "fg"),
                                           rules=Rules(submissions_per_phase=3, only_final_counts=True)))


def test_warning_when_only_the_final_counts_and_it_is_not_the_best(ledger, capsys, cpx_host, packaged):
    cpx_host.register(_FinalOnly(), name="final-only-plugin", origin="tests")
    packaged("a", created_at="2026-01-01T10:00:00+00:00")
    packaged("b", created_at="2026-01-02T10:00:00+00:00")
    ledger.record_score("a", 0.74)
    ledger.record_score("b", 0.71)

    code, out, err = cpx(capsys, "submissions", "--competition", "final-only")
    assert code == 0
    assert "1 of 3" not in out and "2 of 3 submissions used, 1 left" in out
    assert "only the final submission counts" in out
    assert "b (0.7100), is not your best: a (0.7400)" in " ".join(err.split())
    assert "cpx submit a --final" in err

    assert cpx(capsys, "submit", "a", "--final")[0] == 0
    assert submission_report(ledger, cpx_host.competition("final-only")).warnings == []


def test_recording_past_the_phase_limit_warns(ledger, capsys, cpx_host, packaged):
    cpx_host.register(_FinalOnly(), name="final-only-plugin", origin="tests")
    for i in range(4):
        packaged(f"s{i}", run_name="fo", created_at=f"2026-01-0{i + 1}T10:00:00+00:00")
    run = ledger.get_run("fo")
    ledger.update_run(run["id"], competition="final-only")
    for i in range(3):
        assert cpx(capsys, "submit", f"s{i}", "--record-score", "0.5")[0] == 0
    code, out, err = cpx(capsys, "submit", "s3", "--record-score", "0.5")
    assert code == 0
    assert "this is submission 4 in phase 'test', but final-only allows 3" in err
    assert used_in_phase(ledger) == ["s0", "s1", "s2", "s3"]


def test_main_score_prefers_manual_then_metric_column():
    rows = [
        {"id": 1, "phase": "test", "column_key": "duration", "score": 0.1, "source": "codabench", "recorded_at": "2"},
        {"id": 2, "phase": "test", "column_key": "f_score", "score": 0.7, "source": "codabench", "recorded_at": "1"},
        {"id": 3, "phase": "dev", "column_key": "score", "score": 0.9, "source": "manual", "recorded_at": "3"},
    ]
    assert main_score(rows, "test", "fscore")["score"] == 0.7
    assert main_score(rows, "dev")["score"] == 0.9
    assert main_score(rows, "final") is None
    assert main_score(rows[:1], "test")["column_key"] == "duration"


def test_a_bad_score_with_zip_registers_nothing(ledger, capsys, cpx_synthetic, cpx_host, tmp_path):
    comp = cpx_host.competition("celebamask-mini")
    zip_path = hand_made_zip(tmp_path / "mine.zip", cpx_synthetic, comp)
    code, _, err = cpx(capsys, "submit", "v1", "--zip", zip_path, "--record-score", "72",
                       "--competition", "celebamask-mini")
    assert code == 2 and "outside 0..1" in err and "give 0.72" in err
    assert ledger.list_submissions() == []
    # so is a validation score off the metric's scale
    code, _, err = cpx(capsys, "submit", "v1", "--zip", zip_path, "--val-score", "70",
                       "--competition", "celebamask-mini")
    assert code == 2 and "--val-score: '70' is outside 0..1" in err
    assert ledger.list_submissions() == []
