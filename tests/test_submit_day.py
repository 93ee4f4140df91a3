"""A competitor's whole submission day on the test Codabench, through the command line: log in
by e-mail, package with flip TTA, upload and poll, add it to the leaderboard, read the public
leaderboard, sync, and watch the budget fall."""

from __future__ import annotations

import io
import json
import sys
import zipfile

from codabench_server import FakeCodabench

from cpx.cli import main
from cpx.runs.ledger import Ledger


def test_a_whole_submission_day(cpx_workspace, unet_run, capsys, monkeypatch):
    # the session's unet run (synthetic faces, 4 test images), in this workspace's ledger
    (cpx_workspace.root / "cpx.yaml").write_text("codabench_competition: 42\n")

    def cpx(*args, stdin=None):
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == 0, f"cpx {' '.join(map(str, args))}: {err}"
        return " ".join(out.split()), " ".join(err.split())

    def used_today():
        status = json.loads(cpx("codabench", "status", "--json")[0])
        return status["phases"][0]["used_today"]

    with FakeCodabench() as fake:
        fake.add_submission(owner="bob", scores={"fscore": "0.95"}, on_leaderboard=True)

        # morning: log in with the e-mail address; cpx learns the username
        out, _ = cpx("codabench", "login", "--url", fake.url, "--username", fake.email, "--password-stdin",
                     stdin=fake.password + "\n")
        assert f"logged in to {fake.url} as alice" in out
        assert used_today() == 0

        # package with flip TTA: every mask checked against what solution/run.py writes
        out, _ = cpx("package", unet_run, "--name", "v1", "--tta", "flip")
        assert "re-run on all 4 test images: identical masks" in out
        assert "budget phase 'test': 0 of 10 used, 10 left; Codabench phase 7 (Development) today: 0 of 5 used" in out
        with Ledger(cpx_workspace.ledger_path) as ledger:
            zip_path = ledger.get_submission("v1")["zip_path"]
        with zipfile.ZipFile(zip_path) as zf:
            assert json.loads(zf.read("solution/model.json"))["tta"] == ["flip"]

        # upload, poll to the score, and put it on the public leaderboard
        out, _ = cpx("submit", "v1", "--upload", "--wait", "--poll", "0.01", "--timeout", "10")
        assert "Running" in out and "Finished" in out and "recorded test score 0.7200 for v1 (codabench)" in out
        assert used_today() == 1
        out, _ = cpx("submit", "v1", "--final")
        assert "to the public leaderboard" in out
        with Ledger(cpx_workspace.ledger_path) as ledger:
            codabench_id = int(ledger.get_submission("v1")["codabench_id"])
        assert fake.leaderboard_entries() == sorted([codabench_id, min(fake.submissions)])

        # the public leaderboard, our entry marked
        out, _ = cpx("leaderboard", "--remote")
        assert "alice (you)" in out and "your rank: 2 of 2" in out and "0.9500" in out and "0.7200" in out

        # afternoon: a submission made on the website, then sync; the budget falls with it
        website = fake.add_submission(owner="alice", scores={"fscore": "0.7050"})
        out, _ = cpx("codabench", "sync")
        assert f"not in the ledger: Codabench submission {website} (Finished, 0.7050)" in out
        assert used_today() == 2
        report = json.loads(cpx("submissions", "--json")[0])
        assert report["used"] == 1 and report["final"] == "v1" and report["rows"][0]["test_score"] == 0.72
