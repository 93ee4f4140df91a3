"""The Codabench client against a local fake: API on one port, signed-URL storage on another."""

from __future__ import annotations

import json
import stat
import time
import zipfile

import pytest

from cpx.kernel.errors import CodabenchError, SubmissionError
from cpx.submit import codabench
from cpx.submit.codabench import (
    CodabenchClient,
    CodabenchConnectionError,
    Phase,
    choose_phase,
    client_from_config,
    login,
    submit_zip,
)

FAST = dict(initial_interval=0.01, max_interval=0.02, timeout=5)


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    monkeypatch.setenv("CPX_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("CODABENCH_TOKEN", raising=False)
    monkeypatch.delenv("CODABENCH_URL", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def client(fake):
    return CodabenchClient(fake.url, token=fake.token, timeout=5, retry_backoff=0.01)


@pytest.fixture
def zip_path(tmp_path):
    path = tmp_path / "submission.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("masks/0001.png", b"\x89PNG fake mask bytes" * 50)
        zf.writestr("run.py", "print('hi')\n")
    return path


def api_calls(fake):
    return [(r.method, r.path) for r in fake.requests]


# ---------------------------------------------------------------- login and token storage


def test_login_stores_token_readable_by_owner_only(fake, tmp_path):
    path = login(fake.username, fake.password, url=fake.url + "/")

    assert path == tmp_path / "config" / "codabench.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": fake.url, "token": fake.token, "username": "alice"}
    assert not [p for p in path.parent.iterdir() if p.name != "codabench.json"], "temp file left behind"
    login_request = fake.requests[0]
    assert login_request.path == "/api/api-token-auth/"
    assert "Authorization" not in login_request.headers

    client = client_from_config()
    assert (client.base_url, client.token) == (fake.url, fake.token)
    assert client.phases(fake.competition_id)[0].id == 7
    assert fake.requests[-1].headers["Authorization"] == f"Token {fake.token}"


def test_env_token_overrides_and_stored_token_stays_with_its_server(fake, monkeypatch):
    login(fake.username, fake.password, url=fake.url)

    monkeypatch.setenv("CODABENCH_TOKEN", "tok-from-env")
    assert client_from_config().token == "tok-from-env"

    monkeypatch.delenv("CODABENCH_TOKEN")
    monkeypatch.setenv("CODABENCH_URL", "https://elsewhere.example.org")
    other = client_from_config()
    assert other.base_url == "https://elsewhere.example.org" and other.token is None


def test_relogin_replaces_token_and_keeps_permissions(fake):
    path = codabench.save_credentials(fake.url, "old-token")
    path.chmod(0o644)
    login(fake.username, fake.password, url=fake.url)
    assert json.loads(path.read_text())["token"] == fake.token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_login_with_wrong_password_says_why(fake):
    with pytest.raises(CodabenchError, match="login failed for 'alice': Unable to log in with provided"):
        login("alice", "wrong", url=fake.url)
    assert not codabench.config_path().exists()


# ---------------------------------------------------------------- submitting


def test_submit_upload_and_poll_to_finished(fake, client, zip_path):
    seen = []
    result = submit_zip(client, zip_path, fake.competition_id, wait=True, progress=seen.append, **FAST)

    assert result.ok and result.done
    assert result.id in fake.submissions and result.phase_id == 7
    assert result.scores == {"fscore": 0.72} and isinstance(result.scores["fscore"], float)
    assert result.titles == {"fscore": "Mean F-score"}

    (upload,) = fake.storage_requests
    assert upload.body == zip_path.read_bytes()
    assert upload.headers["Content-Type"] == "application/zip"
    assert "Authorization" not in upload.headers

    calls = api_calls(fake)
    key = next(iter(fake.datasets))
    assert calls[:5] == [
        ("GET", "/api/competitions/42/"),
        ("GET", "/api/can_make_submission/7/"),
        ("POST", "/api/datasets/"),
        ("PUT", f"/api/datasets/completed/{key}/"),
        ("POST", "/api/submissions/"),
    ]
    created = json.loads(fake.requests[2].body)
    assert created["type"] == "submission"
    assert created["request_sassy_file_name"] == "submission.zip"
    assert created["file_size"] == zip_path.stat().st_size
    assert created["name"] != "submission.zip", "dataset names must be unique per user"
    assert json.loads(fake.requests[4].body) == {"phase": 7, "data": key}
    assert calls[5:].count(("GET", f"/api/submissions/{result.id}/")) >= 4
    assert seen == ["uploading", "uploaded", "Submitting", "Submitted", "Running", "Scoring", "Finished"]


def test_progress_does_not_repeat_a_status(fake, client, zip_path):
    fake.statuses = ["Submitting", "Submitting", "Running", "Finished"]
    seen = []
    submit_zip(client, zip_path, fake.competition_id, wait=True, progress=seen.append, **FAST)
    assert seen == ["uploading", "uploaded", "Submitting", "Running", "Finished"]


def test_submit_without_wait_returns_the_new_id(fake, client, zip_path):
    result = submit_zip(client, zip_path, fake.competition_id, phase_id=7)
    assert result.id in fake.submissions and not result.done
    assert fake.count("GET", f"/api/submissions/{result.id}/") == 0


def test_bad_token_is_refused_with_a_login_hint(fake, zip_path):
    client = CodabenchClient(fake.url, token="stale", retry_backoff=0.01)
    with pytest.raises(CodabenchError, match=r"refused the token \(Invalid token\.\).*cpx codabench login"):
        submit_zip(client, zip_path, fake.competition_id)

    anonymous = CodabenchClient(fake.url, retry_backoff=0.01)
    with pytest.raises(CodabenchError, match="cpx codabench login"):
        submit_zip(anonymous, zip_path, fake.competition_id)
    with pytest.raises(CodabenchError, match="credentials were not provided.*cpx codabench login"):
        anonymous.phases(fake.competition_id)


def test_other_permission_errors_do_not_blame_the_token(fake, client, zip_path):
    fake.inject("POST", "/api/submissions/",
                (403, {"detail": "You do not have access to this competition to make a submission"}))
    with pytest.raises(CodabenchError) as info:
        submit_zip(client, zip_path, fake.competition_id)
    assert "do not have access" in str(info.value) and "login" not in str(info.value)


def test_limit_reached_is_refused_before_uploading(fake, client, zip_path):
    fake.can_make = (False, "Reached maximum allowed submissions for this day.")
    fake.phases[0]["used_submissions_per_day"] = 5
    with pytest.raises(CodabenchError, match=r"Reached maximum allowed submissions.*used 5 of 5 today"):
        submit_zip(client, zip_path, fake.competition_id)
    assert fake.count("POST", "/api/datasets/") == 0 and not fake.storage_requests


def test_limit_reached_as_html_500_from_older_servers(fake, client, zip_path):
    fake.inject("POST", "/api/submissions/", "html500")
    with pytest.raises(CodabenchError, match="submission limit is reached") as info:
        submit_zip(client, zip_path, fake.competition_id)
    assert "\n" not in str(info.value) and "<html" not in str(info.value).lower()
    assert fake.count("POST", "/api/submissions/") == 1


def test_finished_parent_with_failed_child_is_a_failure(fake, client, zip_path):
    fake.child_statuses = ["Finished", "Failed"]
    result = submit_zip(client, zip_path, fake.competition_id, wait=True, **FAST)
    assert result.status == "Failed" and not result.ok
    assert "child submission" in result.detail and "task 1 crashed" in result.detail


def test_finished_parent_with_good_children_takes_their_scores(fake, client, zip_path):
    fake.child_statuses = ["Finished"]
    result = submit_zip(client, zip_path, fake.competition_id, wait=True, **FAST)
    assert result.ok and result.scores == {"fscore": 0.72}


def test_cancelled_submission_ends_the_wait(fake, client, zip_path):
    fake.statuses = ["Submitted", "Cancelled"]
    result = submit_zip(client, zip_path, fake.competition_id, wait=True, **FAST)
    assert result.status == "Cancelled" and result.done and not result.ok


def test_wait_times_out_with_a_way_to_check_later(fake, client, zip_path):
    fake.statuses = ["Running"] * 10_000
    result = submit_zip(client, zip_path, fake.competition_id)
    with pytest.raises(CodabenchError, match=rf"{result.id} is still Running after 0.2s.*check it again later"):
        client.wait(result.id, timeout=0.2, initial_interval=0.01, max_interval=0.05)


def test_field_errors_are_joined_on_one_line(fake, client, zip_path):
    fake.inject("POST", "/api/datasets/", (400, {
        "name": ["You already have a dataset by this name."],
        "file_size": ["Too big.", "Over quota."],
        "non_field_errors": ["Storage is full."],
    }))
    with pytest.raises(CodabenchError) as info:
        submit_zip(client, zip_path, fake.competition_id)
    assert str(info.value) == ("Codabench rejected POST /api/datasets/: name: You already have a dataset by "
                               "this name.; file_size: Too big.; Over quota.; Storage is full.")


def test_non_json_answer_is_reported(fake, client):
    fake.inject("GET", "/api/competitions/42/", (200, "<html><title>Welcome</title></html>", "text/html"))
    with pytest.raises(CodabenchError, match="not JSON.*HTML page: Welcome.*a Codabench server"):
        client.phases(fake.competition_id)


# ---------------------------------------------------------------- retries


def test_get_is_retried_after_a_dropped_connection(fake, client):
    fake.inject("GET", "/api/competitions/42/", "drop")
    assert [p.id for p in client.phases(fake.competition_id)] == [7, 8]
    assert fake.count("GET", "/api/competitions/42/") == 2


def test_get_gives_up_after_three_attempts(fake, client):
    fake.inject("GET", "/api/competitions/42/", "drop", "drop", "drop", "drop")
    with pytest.raises(CodabenchConnectionError, match="closed the connection"):
        client.phases(fake.competition_id)
    assert fake.count("GET", "/api/competitions/42/") == 3


def test_post_is_never_retried(fake, client, zip_path):
    fake.inject("POST", "/api/submissions/", "drop")
    with pytest.raises(CodabenchError, match="may still have been applied"):
        submit_zip(client, zip_path, fake.competition_id)
    assert fake.count("POST", "/api/submissions/") == 1


def test_get_is_retried_after_a_gateway_error(fake, client):
    fake.inject("GET", "/api/can_make_submission/7/", (503, "<html><title>Bad Gateway</title></html>", "text/html"))
    assert client.can_make_submission(7) == (True, None)
    assert fake.count("GET", "/api/can_make_submission/7/") == 2


def test_slow_post_times_out_once(fake, zip_path):
    client = CodabenchClient(fake.url, token=fake.token, timeout=0.3, retry_backoff=0.01)
    fake.inject("POST", "/api/submissions/", ("slow", 0.6))
    with pytest.raises(CodabenchConnectionError, match="did not answer POST /api/submissions/ within 0.3s"):
        submit_zip(client, zip_path, fake.competition_id)
    assert fake.count("POST", "/api/submissions/") == 1


def test_a_trickling_server_is_given_up_at_the_calls_total_deadline(fake):
    # issue 19.4: one byte every 50 ms never trips a per-read timeout; the answer would take ~30 s
    client = CodabenchClient(fake.url, token=fake.token, timeout=1.0, retry_backoff=0.01)
    fake.inject("GET", "/api/competitions/42/", ("trickle", 0.05))
    start = time.monotonic()
    with pytest.raises(CodabenchConnectionError, match=r"did not answer GET /api/competitions/42/ within 1s in all"):
        client.phases(42)
    assert time.monotonic() - start < 3
    assert fake.count("GET", "/api/competitions/42/") == 1  # a deadline spent is not retried


def test_wait_ends_at_its_deadline_even_when_each_poll_trickles(fake, zip_path):
    client = CodabenchClient(fake.url, token=fake.token, timeout=30, retry_backoff=0.01)
    created = submit_zip(client, zip_path, fake.competition_id)
    fake.inject("GET", f"/api/submissions/{created.id}/", *[("trickle", 0.05)] * 5)
    start = time.monotonic()
    with pytest.raises(CodabenchError, match=f"submission {created.id} is .* after 1.5s"):
        client.wait(created.id, timeout=1.5, initial_interval=0.01, max_interval=0.02)
    assert time.monotonic() - start < 4


def test_unreachable_server_is_one_clear_line(fake):
    port = fake.url.rsplit(":", 1)[1]
    fake.stop()
    client = CodabenchClient(f"http://127.0.0.1:{port}", token="t", retry_backoff=0.01)
    with pytest.raises(CodabenchConnectionError, match=r"cannot reach Codabench at http://127\.0\.0\.1") as info:
        client.can_make_submission(7)
    assert "refused" in str(info.value)
    with pytest.raises(CodabenchConnectionError) as info:
        client.create_submission(7, "key")
    assert "may still have been applied" not in str(info.value)


# ---------------------------------------------------------------- listing and phases


def test_list_submissions_keeps_own_top_level_newest_first(fake, client):
    first = fake.add_submission(owner="alice", scores={"fscore": "0.5"})
    fake.add_submission(owner="alice", parent=first, scores={"fscore": "0.5"})
    fake.add_submission(owner="bob")
    fake.add_submission(owner="alice", phase=8)
    second = fake.add_submission(owner="alice", status="Running")

    mine = client.list_submissions(7, owner="alice")
    assert [s.id for s in mine] == [second, first]
    assert mine[1].scores == {"fscore": 0.5} and mine[0].status == "Running"
    assert fake.requests[-1].query == {"phase": ["7"]}

    everyone = client.list_submissions(7)
    assert {s.owner for s in everyone} == {"alice", "bob"} and len(everyone) == 3


def test_phase_choice():
    phases = [Phase(1, "Dev", "Previous"), Phase(2, "Test", "Current"), Phase(3, "Final", "Next")]
    assert choose_phase(phases).id == 2
    assert choose_phase(phases, 3).id == 3
    with pytest.raises(CodabenchError, match="phase 9 is not part of competition 5"):
        choose_phase(phases, 9, competition_id=5)
    with pytest.raises(CodabenchError, match="does not say which phase"):
        choose_phase([Phase(1, "Dev", None)])
    with pytest.raises(CodabenchError, match="no phase of the competition is open"):
        choose_phase(phases[:1])


def test_phase_limits_come_from_the_competition(fake, client):
    dev, final = client.phases(fake.competition_id)
    assert (dev.max_submissions_per_day, dev.max_submissions_per_person) == (5, 100)
    assert dev.used_submissions_per_day == 0 and dev.is_current and not final.is_current


def test_local_file_problems_are_caught_before_any_request(fake, client, tmp_path):
    with pytest.raises(SubmissionError, match="no such file"):
        submit_zip(client, tmp_path / "missing.zip", fake.competition_id)
    not_zip = tmp_path / "notes.zip"
    not_zip.write_text("hello")
    with pytest.raises(SubmissionError, match="not a zip file"):
        submit_zip(client, not_zip, fake.competition_id)
    assert fake.requests == []


def test_the_test_server_refuses_a_dataset_without_file_size(fake, client):
    # the real POST /api/datasets/ answers 400 without file_size; cpx always sends it
    with pytest.raises(CodabenchError, match="file_size: This field is required"):
        client.request("POST", "/api/datasets/", json_body={"type": "submission", "name": "x",
                                                             "request_sassy_file_name": "x.zip"})
    key, url = client.create_dataset("x.zip", 123)
    assert fake.datasets[key]["file_size"] == 123
