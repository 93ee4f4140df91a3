"""What a competitor's submission day needs from Codabench, against the test server: who you are
after an e-mail login, what counts against the limit, the public leaderboard, the budget before
it is spent, one zip one name, and the final-only rule."""

from __future__ import annotations

import io
import json
import zipfile

import pytest
from codabench_server import cpx
from conftest import tiny_overrides

from cpx.kernel.errors import SubmissionError
from cpx.submit import codabench
from cpx.submit.package import PackageRequest, package
from cpx.submit.submissions import phase_budget, used_in_phase
from cpx.train.run import TrainRequest, train

FAST = ["--poll", "0.01", "--timeout", "10"]


def one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------- who you are


def test_an_email_login_stores_the_username_and_sync_finds_your_submissions(fake, ledger, tmp_path, capsys,
                                                                           monkeypatch):
    code, out, err = cpx(capsys, "codabench", "login", "--url", fake.url, "--username", fake.email,
                         "--password-stdin", stdin=f"{fake.password}\n", monkeypatch=monkeypatch)
    assert code == 0, err
    # the server takes the e-mail at login, but owns submissions by username
    assert f"as {fake.username};" in out
    assert json.loads(codabench.config_path().read_text())["username"] == fake.username
    assert fake.count("GET", "/api/my_profile/") == 1

    mine = fake.add_submission(owner=fake.username, scores={"fscore": "0.7"})
    fake.add_submission(owner="bob", scores={"fscore": "0.9"})
    code, out, err = cpx(capsys, "codabench", "sync", "--competition", "42", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["remote"] == 1 and [u["id"] for u in report["unknown"]] == [mine]


def test_an_environment_token_learns_the_username_from_the_server(fake, cpx_workspace, capsys, monkeypatch):
    monkeypatch.setenv("CODABENCH_URL", fake.url)
    monkeypatch.setenv("CODABENCH_TOKEN", fake.token)
    fake.add_submission(owner=fake.username)
    fake.add_submission(owner="bob")
    code, out, err = cpx(capsys, "codabench", "sync", "--competition", "42", "--json")
    assert code == 0, err
    assert json.loads(out)["remote"] == 1


# ---------------------------------------------------------------- the upload names its competition


def test_the_dataset_names_its_competition_and_file(logged_in, ledger, tmp_path, capsys, packaged):
    packaged()
    code, _, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")
    assert code == 0, err
    (dataset,) = logged_in.datasets.values()
    assert dataset["competition"] == 42 and dataset["file_name"] == "submission-v2.zip"
    assert dataset["file_size"] == (tmp_path / "submission-v2.zip").stat().st_size


# ---------------------------------------------------------------- what counts


def test_cancelled_submissions_count_and_failed_ones_do_not(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    packaged("a")
    packaged("b")
    fake.statuses = ["Submitted", "Cancelled"]
    assert cpx(capsys, "submit", "a", "--upload", "--competition", "42", "--wait", *FAST)[0] == 0
    fake.statuses = ["Submitted", "Failed"]
    assert cpx(capsys, "submit", "b", "--upload", "--competition", "42", "--wait", *FAST)[0] == 2
    assert ledger.get_submission("a")["status"] == "Cancelled"
    assert ledger.get_submission("b")["status"] == "Failed"
    # as the server counts: the cancelled one is used, the failed one is not
    assert used_in_phase(ledger) == ["a"]
    phase = codabench.client_from_config().phases(42)[0]
    assert phase.used_submissions_per_day == 1 and phase.used_submissions_per_person == 1
    report = json.loads(cpx(capsys, "submissions", "--json")[1])
    assert report["used"] == 1 and {r["name"]: r["counts"] for r in report["rows"]} == {"a": True, "b": False}


def test_the_servers_counts_win_over_the_ledgers(logged_in, ledger, tmp_path):
    fake = logged_in
    fake.phases[0]["used_submissions_per_day"] = 3  # made through the website, unknown to the ledger
    phase = codabench.client_from_config().phases(42)[0]
    budget = phase_budget(ledger, None, remote=phase)
    assert budget.used == 0 and budget.left == 2
    assert "Codabench phase 7 (Development) today: 3 of 5 used, 2 left" in budget.describe()


# ---------------------------------------------------------------- the public leaderboard


def test_final_puts_an_uploaded_submission_on_the_leaderboard_and_says_so(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    packaged("a")
    packaged("b")
    for name in ("a", "b"):
        assert cpx(capsys, "submit", name, "--upload", "--competition", "42", "--wait", *FAST)[0] == 0
    ida, idb = (int(ledger.get_submission(n)["codabench_id"]) for n in ("a", "b"))
    assert fake.leaderboard_entries() == []  # an upload alone stays off the public leaderboard

    code, out, err = cpx(capsys, "submit", "a", "--final")
    assert code == 0, err
    assert f"added Codabench submission {ida} to the public leaderboard" in one_line(out)
    assert fake.leaderboard_entries() == [ida] and ledger.get_submission("a")["is_final"]
    assert fake.count("POST", f"/api/submissions/{ida}/submission_leaderboard_connection/") == 1

    # the next final one replaces it, on the server as in the ledger
    assert cpx(capsys, "submit", "b", "--final")[0] == 0
    assert fake.leaderboard_entries() == [idb]
    assert not ledger.get_submission("a")["is_final"]


def test_a_competition_that_chooses_the_entry_itself_is_a_warning(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    fake.leaderboard_rule = "force_best"
    packaged()
    code, out, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42", "--leaderboard", "--wait",
                         *FAST)
    assert code == 0, err
    assert "not added to the leaderboard: Codabench refused (Users are not allowed to edit the leaderboard" \
        in one_line(err)


def test_upload_with_leaderboard_adds_it_and_final_on_a_local_one_says_it_is_local(logged_in, ledger, tmp_path,
                                                                                  capsys, packaged):
    fake = logged_in
    packaged("up")
    packaged("local")
    code, out, err = cpx(capsys, "submit", "up", "--upload", "--competition", "42", "--leaderboard")
    assert code == 0, err
    assert "to the public leaderboard" in one_line(out) and "once it is scored" in one_line(out)
    assert fake.leaderboard_entries() == [int(ledger.get_submission("up")["codabench_id"])]

    code, _, err = cpx(capsys, "submit", "local", "--final")
    assert code == 0 and "marked final in the ledger only: it was never uploaded" in one_line(err)
    code, _, err = cpx(capsys, "submit", "local", "--leaderboard")
    assert code == 2 and "--leaderboard goes with --upload" in err


def test_the_remote_leaderboard_marks_your_entries_and_rank(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    fake.add_submission(owner="bob", scores={"fscore": "0.91"}, on_leaderboard=True)
    fake.add_submission(owner="carol", scores={"fscore": "0.55"}, on_leaderboard=True)
    fake.add_submission(owner="dave", scores={"fscore": "0.99"})  # not added: not shown
    packaged()
    assert cpx(capsys, "submit", "v2", "--upload", "--competition", "42", "--final", "--wait", *FAST)[0] == 0
    mine = int(ledger.get_submission("v2")["codabench_id"])

    code, out, err = cpx(capsys, "leaderboard", "--remote", "--competition", "42", "--json")
    assert code == 0, err
    board = json.loads(out)
    assert [(e["owner"], e["scores"]["fscore"], e["mine"]) for e in board["entries"]] == [
        ("bob", 0.91, False), ("alice", 0.72, True), ("carol", 0.55, False)]
    assert board["my_rank"] == 2 and board["entries"][1]["id"] == mine
    assert board["columns"][0]["title"] == "Mean F-score" and board["phase"]["id"] == 7

    code, out, _ = cpx(capsys, "leaderboard", "--remote", "--competition", "42", "--limit", "1")
    assert code == 0
    assert "alice (you)" in out and "your rank: 2 of 3" in out and "0.9100" in out and "carol" not in out


# ---------------------------------------------------------------- the budget, before it is spent


def test_the_last_submission_needs_a_yes(logged_in, ledger, tmp_path, capsys, packaged):
    fake = logged_in
    fake.phases[0]["used_submissions_per_day"] = 4  # one left today
    packaged()
    code, out, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")
    assert code == 2
    assert "budget: phase 'test': 0 of 10 used, 10 left; Codabench phase 7 (Development) today: 4 of 5 used, " \
           "1 left; Codabench phase 7 (Development) in total: 0 of 100 used, 100 left" in one_line(out)
    assert one_line(err) == ("error: not uploaded: this is your last submission in Codabench phase 7 "
                             "(Development) today: 4 of 5 used (--yes uploads without asking)")
    assert not fake.datasets and not ledger.get_submission("v2")["uploaded"]

    code, out, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42", "--yes")
    assert code == 0, err
    assert ledger.get_submission("v2")["uploaded"]


def test_the_ledgers_limit_asks_too_and_a_yes_on_the_terminal_goes_on(logged_in, ledger, tmp_path, capsys,
                                                                      monkeypatch, packaged):
    for i in range(9):
        packaged(f"old{i}", uploaded=True, phase="test")
    packaged()
    asked = []
    import cpx.cli._common as common

    monkeypatch.setattr(common, "confirm", lambda question: asked.append(question) or True)
    code, out, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")
    assert code == 0, err
    assert asked == ["this is your last submission in phase 'test': 9 of 10 used; upload v2 anyway?"]
    assert "phase test: 10 of 10 submissions used, 0 left" in out


def test_package_shows_the_budget_and_asks_before_the_last_one(ledger, cpx_workspace, cpx_host, tiny_model,
                                                               cpx_synthetic, tmp_path, packaged):
    run = train(TrainRequest(recipe="msf-lmsa", overrides=tiny_overrides(
        **{"data.path": str(cpx_synthetic), "data.image_size": 32, "train.epochs": 1})), cpx_workspace, cpx_host)
    for i in range(10):
        packaged(f"old{i}", uploaded=True, phase="test")
    request = PackageRequest(run=run.run_id, name="v9")
    with pytest.raises(SubmissionError, match=r"not packaged: no submissions left in phase 'test': 10 of 10 used"):
        package(request, cpx_workspace, cpx_host)
    asked = []
    with pytest.raises(SubmissionError, match="not packaged"):
        package(request, cpx_workspace, cpx_host, confirm=lambda q: asked.append(q) or False)
    assert asked == ["no submissions left in phase 'test': 10 of 10 used; package v9 anyway?"]
    # with --yes it goes on, to the next check (this tiny model has no standalone source)
    request.yes = True
    with pytest.raises(SubmissionError, match="no standalone source"):
        package(request, cpx_workspace, cpx_host)


# ---------------------------------------------------------------- one zip, one name


def test_the_same_zip_under_a_second_name_is_refused_naming_the_first(ledger, capsys, cpx_synthetic, cpx_host,
                                                                      tmp_path):
    from test_submissions import hand_made_zip

    comp = cpx_host.competition("celebamask-mini")
    zip_path = hand_made_zip(tmp_path / "mine.zip", cpx_synthetic, comp)
    copy = tmp_path / "copy.zip"
    copy.write_bytes(zip_path.read_bytes())
    assert cpx(capsys, "submit", "v1", "--zip", zip_path, "--record-score", "0.7",
               "--competition", "celebamask-mini")[0] == 0
    code, _, err = cpx(capsys, "submit", "v2", "--zip", copy)
    assert code == 2
    assert "is already recorded as 'v1'" in one_line(err) and str(zip_path) in one_line(err)
    assert [s["name"] for s in ledger.list_submissions()] == ["v1"]


# ---------------------------------------------------------------- only the final one counts


def test_celebamask_mini_counts_only_the_final_submission(cpx_host):
    assert cpx_host.competition("celebamask-mini").rules.only_final_counts is True


def test_a_final_that_is_not_the_best_by_validation_is_warned_about(ledger, tmp_path, capsys, packaged):
    packaged("good", val=0.74, uploaded=True, phase="test", created_at="2026-01-01T10:00:00+00:00")
    packaged("worse", val=0.70, uploaded=True, phase="test",
             created_at="2026-01-02T10:00:00+00:00")
    code, out, err = cpx(capsys, "submit", "worse", "--final")
    assert code == 0
    assert ("only the final submission counts in celebamask-mini, and the final one, worse (0.7000), is not "
            "your best: good (0.7400) by validation fscore") in one_line(err)
    code, out, err = cpx(capsys, "submissions")
    assert "only the final submission counts" in out and "good (0.7400) by validation fscore" in one_line(err)
    assert cpx(capsys, "submit", "good", "--final")[0] == 0
    assert "not your best" not in cpx(capsys, "submissions")[2]


# ---------------------------------------------------------------- weights under other keys


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_submit_zip_accepts_the_weight_keys_of_older_scripts_and_says_which(ledger, capsys, cpx_synthetic,
                                                                           cpx_host, tmp_path, key):
    import torch
    from test_submissions import hand_made_zip

    comp = cpx_host.competition("celebamask-mini")
    zip_path = hand_made_zip(tmp_path / "old.zip", cpx_synthetic, comp)
    with zipfile.ZipFile(zip_path) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    buf = io.BytesIO()
    torch.save({key: {"conv.weight": torch.zeros(4, 3, 1, 1)}, "epoch": 7}, buf)
    files["solution/ckpt.pth"] = buf.getvalue()
    with zipfile.ZipFile(zip_path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    code, out, err = cpx(capsys, "submit", "v1", "--zip", zip_path, "--competition", "celebamask-mini")
    assert code == 0, err
    assert f"weights under '{key}'" in one_line(out)
    assert ("weights found under" in err) == (key != "state_dict")


# ---------------------------------------------------------------- a lost answer (issue 19.3)


def test_a_lost_answer_never_spends_a_second_submission_for_one_zip(logged_in, ledger, packaged, capsys):
    fake = logged_in
    packaged()
    fake.inject("POST", "/api/submissions/", "lose")  # the server creates it; its answer never comes
    code, _, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "looks the submission up" in one_line(err)
    assert ledger.get_submission("v2")["upload_attempt"]["phase"] == 7
    (made,) = fake.submissions
    # the same command again: found on the server and recorded, nothing sent twice
    code, out, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")
    assert code == 0, err
    assert fake.count("POST", "/api/submissions/") == 1 and len(fake.submissions) == 1
    sub = ledger.get_submission("v2")
    assert sub["codabench_id"] == str(made) and sub["uploaded"] and sub["upload_attempt"] is None


def test_an_attempt_that_never_reached_the_server_is_sent_again(logged_in, ledger, packaged, capsys):
    fake = logged_in
    packaged()
    fake.inject("POST", "/api/submissions/", "drop")  # closed before the server acted on it
    assert cpx(capsys, "submit", "v2", "--upload", "--competition", "42")[0] == 2
    assert not fake.submissions
    code, _, err = cpx(capsys, "submit", "v2", "--upload", "--competition", "42")
    assert code == 0, err
    assert len(fake.submissions) == 1 and ledger.get_submission("v2")["upload_attempt"] is None
