"""`cpx codabench login|logout|status|sync` and `cpx submit --upload`, end to end against the fake server."""

from __future__ import annotations

import json

import pytest
from codabench_server import cpx

from cpx.submit import codabench


def errors(err):
    return [line for line in err.splitlines() if line.strip()]


FAST = ["--poll", "0.01", "--timeout", "10"]


# ---------------------------------------------------------------- login, status, logout


def test_login_status_logout(fake, capsys, monkeypatch):
    code, out, err = cpx(capsys, "codabench", "login", "--url", fake.url, "--username", "alice",
                         "--password-stdin", stdin="s3cret\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert f"logged in to {fake.url} as alice" in out
    stored = json.loads(codabench.config_path().read_text())
    assert stored == {"url": fake.url, "token": fake.token, "username": "alice"}

    code, out, err = cpx(capsys, "codabench", "status", "--competition", "42", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert status["username"] == "alice" and status["url"] == fake.url
    dev, final = status["phases"]
    assert (dev["id"], dev["name"], dev["status"], dev["can_make_submission"]) == (7, "Development", "Current", True)
    assert dev["limits"] == "0 of 5 today, 0 of 100 in total"
    assert final["can_make_submission"] is None  # only the open phase is asked

    code, out, _ = cpx(capsys, "codabench", "status", "--competition", "42")
    assert "Development" in out and "0 of 5 today" in out and "yes" in out

    code, out, _ = cpx(capsys, "codabench", "logout")
    assert code == 0 and "token removed" in out
    assert not codabench.config_path().exists()
    code, out, _ = cpx(capsys, "codabench", "logout")
    assert code == 0 and "no stored token" in out

    code, _, err = cpx(capsys, "codabench", "status", "--competition", "42", "--url", fake.url)
    assert code == 2 and errors(err) == [f"error: no Codabench token for {fake.url}; run `cpx codabench login` "
                                         "(or set CODABENCH_TOKEN)"]


def test_login_with_a_wrong_password_is_one_line(fake, capsys, monkeypatch):
    code, _, err = cpx(capsys, "codabench", "login", "--url", fake.url, "--username", "alice",
                       "--password-stdin", stdin="nope\n", monkeypatch=monkeypatch)
    assert code == 2
    assert errors(err) == ["error: Codabench login failed for 'alice': Unable to log in with provided credentials."]
    assert not codabench.config_path().exists()


def test_status_needs_a_numeric_competition(logged_in, capsys):
    code, _, err = cpx(capsys, "codabench", "status", "--competition", "celebamask")
    assert code == 2 and "is not a Codabench competition id" in err
    code, _, err = cpx(capsys, "codabench", "status", "--competition", "99")
    assert code == 2 and len(errors(err)) == 1 and "Codabench has no /api/competitions/99/" in err


# ---------------------------------------------------------------- submit --upload


def test_upload_and_wait_records_the_score(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    sub = packaged()
    zip_bytes = open(sub["zip_path"], "rb").read()

    code, out, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42", "--wait", *FAST)

    assert code == 0, err
    (upload,) = fake.storage_requests
    assert upload.body == zip_bytes
    (remote_id,) = [sid for sid, s in fake.submissions.items() if s["parent"] is None]
    row = ledger.get_submission("v2")
    assert row["uploaded"] is True and row["uploaded_at"]
    assert row["codabench_id"] == str(remote_id) and row["status"] == "Finished"
    assert (row["codabench_competition"], row["codabench_phase"], row["phase"]) == (42, 7, "test")
    (score,) = ledger.scores_for("v2")
    assert (score["phase"], score["column_key"], score["score"], score["source"]) == ("test", "fscore", 0.72, "codabench")
    assert "Running" in out and "Finished" in out
    assert f"Codabench submission {remote_id}: Finished" in out
    assert "recorded test score 0.7200 for v2" in out and "gap +0.0300" in out
    assert "1 of 10 submissions used, 9 left" in out

    # once uploaded, a second upload is refused before anything reaches the server
    calls = len(fake.requests)
    code, _, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")
    assert code == 2 and f"already uploaded (Codabench id {remote_id}, Finished)" in err
    assert len(fake.requests) == calls

    code, out, _ = cpx(capsys, "submissions", "--json")
    report = json.loads(out)
    (listed,) = report["rows"]
    assert listed["test_score"] == 0.72 and listed["codabench_id"] == str(remote_id) and report["used"] == 1


def test_bad_token_is_one_line_and_changes_nothing(fake, ledger, tmp_path, capsys, packaged):
    codabench.save_credentials(fake.url, "stale-token", username="alice")
    packaged()

    code, _, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42", "--wait", *FAST)

    assert code == 2
    (line,) = errors(err)
    assert line.startswith("error: Codabench refused the token (Invalid token.)")
    assert not fake.storage_requests and not fake.submissions
    row = ledger.get_submission("v2")
    assert row["uploaded"] is False and row["codabench_id"] is None and ledger.scores_for("v2") == []


def test_limit_reached_is_one_line_and_uploads_nothing(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    fake.can_make = (False, "Reached maximum allowed submissions for this phase")
    fake.phases[0]["used_submissions_per_day"] = 5
    packaged()

    code, _, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")

    assert code == 2
    (line,) = errors(err)
    assert "will not take a submission to phase 7 (Development)" in line
    assert "Reached maximum allowed submissions" in line
    assert not fake.storage_requests and not fake.datasets
    assert ledger.get_submission("v2")["uploaded"] is False


def test_upload_needs_a_competition_and_a_packaged_zip(logged_in, ledger, tmp_path, capsys, packaged):
    sub = packaged()
    code, _, err = cpx(capsys, "submit", "v2", "--upload")
    assert code == 2 and "--competition: give the Codabench competition id" in err
    with open(sub["zip_path"], "ab") as fh:
        fh.write(b"changed")
    code, _, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")
    assert code == 2 and "changed since it was recorded (sha256 differs)" in err
    assert not logged_in.storage_requests


def test_failed_scoring_is_recorded_and_reported(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    fake.child_statuses = ["Finished", "Failed"]
    packaged()

    code, out, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42", "--wait", *FAST)

    assert code == 2
    assert "Failed" in out
    assert errors(err)[-1].startswith("error: Codabench failed submission") and "crashed" in err
    row = ledger.get_submission("v2")
    assert row["status"] == "Failed" and "crashed" in row["status_detail"]
    assert ledger.scores_for("v2") == []
    # failed submissions do not count against the phase
    report = json.loads(cpx(capsys, "submissions", "--json")[1])
    assert report["used"] == 0


# ---------------------------------------------------------------- sync


def test_sync_fills_in_scores_by_codabench_id(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    packaged()
    code, out, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42", "--note", "first try")
    assert code == 0, err
    assert "cpx codabench sync --competition 42" in out
    row = ledger.get_submission("v2")
    assert row["status"] == "Submitting" and ledger.scores_for("v2") == []
    # meanwhile: the server finished it, and something was submitted through the website
    sid = int(row["codabench_id"])
    fake.submissions[sid]["_script"] = ["Finished"]
    other = fake.add_submission(owner="alice", scores={"fscore": "0.7050"})
    fake.add_submission(owner="bob", scores={"fscore": "0.9"})

    code, out, err = cpx(capsys, "codabench", "sync", "--competition", "42", "--json")

    assert code == 0, err
    report = json.loads(out)
    assert report["phase_id"] == 7 and report["remote"] == 2  # bob's is not ours
    assert report["filled"] == [["v2", 0.72]]
    assert [u["id"] for u in report["unknown"]] == [other]
    assert ledger.get_submission("v2")["status"] == "Finished"
    assert ledger.get_submission("v2")["note"] == "first try"
    (score,) = ledger.scores_for("v2")
    assert (score["score"], score["source"]) == (0.72, "codabench")

    # a second sync finds nothing new and keeps the score
    code, out, _ = cpx(capsys, "codabench", "sync", "--competition", "42")
    assert code == 0
    assert f"not in the ledger: Codabench submission {other} (Finished, 0.7050)" in " ".join(out.split())
    assert "recorded" not in out
    assert [s["score"] for s in ledger.scores_for("v2")] == [0.72]


def test_sync_with_a_bad_token_is_one_line(fake, capsys):
    codabench.save_credentials(fake.url, "stale-token")
    code, _, err = cpx(capsys, "codabench", "sync", "--competition", "42")
    assert code == 2 and len(errors(err)) == 1 and "refused the token" in err


def test_wait_timeout_keeps_the_id_for_a_later_sync(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    fake.statuses = ["Running"] * 1000
    packaged()

    code, out, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42", "--wait",
                         "--poll", "0.01", "--timeout", "0.3")

    assert code == 2
    (line,) = errors(err)
    assert "is still Running after 0.3s" in line and "cpx codabench sync --competition 42" in line
    row = ledger.get_submission("v2")
    assert row["uploaded"] is True and row["codabench_id"] is not None and row["status"] == "Submitting"

    fake.submissions[int(row["codabench_id"])]["_script"] = ["Finished"]
    assert cpx(capsys, "codabench", "sync", "--competition", "42")[0] == 0
    assert [s["score"] for s in ledger.scores_for("v2")] == [0.72]


def test_a_submission_scored_by_hand_is_not_uploaded_again(logged_in, ledger, tmp_path, capsys, packaged):
    packaged()
    ledger.record_score("v2", 0.71)
    code, _, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")
    assert code == 2 and "already has a test score (0.7100, manual), so it was submitted already" in err
    assert not logged_in.requests


def test_no_home_directory_falls_back_to_the_workspace(fake, capsys, monkeypatch, cpx_workspace):
    # issue 19.10: a container user id without a passwd entry: Path.home() raises
    from pathlib import Path

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    for name in ("CPX_CONFIG_DIR", "XDG_CONFIG_HOME", "HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CODABENCH_TOKEN", fake.token)
    monkeypatch.setenv("CODABENCH_URL", fake.url)
    code, out, err = cpx(capsys, "codabench", "status", "--competition", "42", "--json")
    assert code == 0, err
    monkeypatch.delenv("CODABENCH_TOKEN")
    code, _, err = cpx(capsys, "codabench", "login", "--url", fake.url, "--username", "alice",
                       "--password-stdin", stdin="s3cret\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert (cpx_workspace.root / ".cpx" / "codabench.json").is_file()
    monkeypatch.setattr("cpx.kernel.workspace.Workspace.current", classmethod(lambda cls, *a: _raise(OSError())))
    from cpx.kernel.errors import CodabenchError

    with pytest.raises(CodabenchError, match="no home directory .* set CPX_CONFIG_DIR"):
        codabench.config_path()


def _raise(exc):
    raise exc
