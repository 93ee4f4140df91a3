"""Secrets and transport: the token file stays private, tokens go to their own server only, never
over plain HTTP to another machine, and nothing cpx writes or prints holds the token or the
password (issue 9, section 5)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from codabench_server import FakeCodabench, cpx

from cpx.kernel.errors import CodabenchError
from cpx.runs.ledger import Ledger
from cpx.submit import codabench

PASSWORD = "pw-Zq8!unique"
TOKEN = "tok-9f3c1e77d2unique"


@pytest.fixture
def fake():
    with FakeCodabench(password=PASSWORD, token=TOKEN) as server:
        yield server


def errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_a_token_file_others_can_read_is_refused_with_the_fix(fake, capsys, monkeypatch):
    path = codabench.save_credentials(fake.url, fake.token, username="alice")
    path.chmod(0o644)
    code, _, err = cpx(capsys, "codabench", "status", "--competition", "42")
    assert code == 2
    (line,) = errors(err)
    assert f"{path} holds your Codabench token and other users can read it (mode 644)" in line
    assert f"chmod 600 {path}" in line and fake.token not in line
    assert fake.requests == []

    path.chmod(0o600)
    assert cpx(capsys, "codabench", "status", "--competition", "42")[0] == 0

    # logging in again is the other fix: it rewrites the file private
    path.chmod(0o640)
    code, _, err = cpx(capsys, "codabench", "login", "--url", fake.url, "--username", "alice", "--password-stdin",
                       stdin=PASSWORD + "\n", monkeypatch=monkeypatch)
    assert code == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("command", [["codabench", "login", "--username", "alice", "--password-stdin"],
                                     ["codabench", "status", "--competition", "42"],
                                     ["leaderboard", "--remote", "--competition", "42"]])
def test_plain_http_to_another_machine_is_refused_before_any_request(command, capsys, monkeypatch):
    code, _, err = cpx(capsys, *command, "--url", "http://10.20.30.40:8000", stdin=PASSWORD + "\n",
                       monkeypatch=monkeypatch)
    assert code == 2
    (line,) = errors(err)
    assert line.startswith("error: refusing plain http://10.20.30.40:8000: your password and token would travel "
                           "unencrypted; use https://")
    assert "--allow-http" in line
    assert not codabench.config_path().exists()


def test_plain_http_accepted_at_login_is_remembered_for_that_server_only(monkeypatch):
    codabench.save_credentials("http://10.20.30.40:8000", "t", username="alice", allow_http=True)
    client = codabench.client_from_config()
    assert (client.base_url, client.token) == ("http://10.20.30.40:8000", "t")
    with pytest.raises(CodabenchError, match="refusing plain http://10.20.30.41"):
        codabench.client_from_config("http://10.20.30.41")
    # loopback needs no permission: the traffic never leaves the machine
    for url in ("http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9", "http://127.8.9.10"):
        assert codabench.normalize_url(url) == url


def test_credentials_in_a_url_are_refused_and_never_echoed(capsys, monkeypatch):
    url = "https://bob:hunter2secret@codabench.example.org"
    code, out, err = cpx(capsys, "codabench", "login", "--url", url, "--username", "bob", "--password-stdin",
                         stdin=PASSWORD + "\n", monkeypatch=monkeypatch)
    assert code == 2
    (line,) = errors(err)
    assert "holds a user name or password" in line and "***@codabench.example.org" in line
    assert "hunter2secret" not in out + err and "bob:" not in out + err
    assert not codabench.config_path().exists()
    with pytest.raises(CodabenchError) as info:
        codabench.normalize_url("https://codabench.example.org/?token=abc123")
    assert "abc123" not in str(info.value)


def test_an_environment_token_goes_to_its_own_server_only(fake, capsys, monkeypatch):
    monkeypatch.setenv("CODABENCH_URL", fake.url)
    monkeypatch.setenv("CODABENCH_TOKEN", fake.token)
    assert cpx(capsys, "codabench", "status", "--competition", "42")[0] == 0
    assert fake.requests[-1].headers["Authorization"] == f"Token {fake.token}"

    with FakeCodabench(token="other") as other:
        code, _, err = cpx(capsys, "codabench", "status", "--competition", "42", "--url", other.url)
        assert code == 2
        (line,) = errors(err)
        assert f"no Codabench token for {other.url}; CODABENCH_TOKEN is only sent to {fake.url}" in line
        assert other.requests == []

        # the same without CODABENCH_URL: the token is bound to codabench.org, not to any --url
        monkeypatch.delenv("CODABENCH_URL")
        code, _, err = cpx(capsys, "codabench", "status", "--competition", "42", "--url", other.url)
        assert code == 2 and "only sent to https://www.codabench.org" in err
        assert other.requests == []


def test_nothing_cpx_writes_or_prints_holds_the_token_or_the_password(fake, cpx_workspace, capsys, monkeypatch,
                                                                    tmp_path):
    printed = []

    def run(*args, stdin=None):
        code, out, err = cpx(capsys, *args, stdin=stdin, monkeypatch=monkeypatch)
        printed.append(out + err)
        return code

    assert run("codabench", "login", "--url", fake.url, "--username", fake.email, "--password-stdin",
               stdin=PASSWORD + "\n") == 0
    with Ledger(cpx_workspace.ledger_path) as ledger:
        run_row = ledger.add_run(name="r1", competition="celebamask-mini", status="completed", best_val_score=0.7)
        zpath = cpx_workspace.root / "submission-v1.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            zf.writestr("masks/a.png", b"x" * 100)
        ledger.add_submission("v1", run_id=run_row["id"], zip_path=str(zpath),
                              zip_sha256=hashlib.sha256(zpath.read_bytes()).hexdigest())
    fast = ["--poll", "0.01", "--timeout", "10"]
    assert run("submit", "v1", "--upload", "--competition", "42", "--wait", "--final", *fast) == 0
    assert run("codabench", "sync", "--competition", "42") == 0
    assert run("codabench", "status", "--competition", "42", "--json") == 0
    assert run("leaderboard", "--remote", "--competition", "42", "--json") == 0
    assert run("submissions", "--json") == 0
    fake.statuses = ["Failed"]
    assert run("submit", "v1", "--final") == 0
    codabench.save_credentials(fake.url, "tok-stale-unique", username="alice")
    assert run("codabench", "status", "--competition", "42") == 2  # a refused token is not printed either
    codabench.save_credentials(fake.url, fake.token, username="alice")

    # the password as typed and as a form encodes it
    secrets = [PASSWORD.encode(), quote_plus(PASSWORD).encode(), TOKEN.encode(), b"tok-stale-unique"]
    for text in printed:
        assert not any(s.decode() in text for s in secrets), text
    token_file = codabench.config_path()
    written = [p for root in (cpx_workspace.root, token_file.parent, Path(os.environ.get("TMPDIR", "/nonexistent")))
               if root.is_dir() for p in root.rglob("*") if p.is_file()]
    assert cpx_workspace.ledger_path in written and token_file in written
    for path in written:
        data = path.read_bytes()
        for secret in secrets:
            if path == token_file and secret == TOKEN.encode():
                continue  # the one place the token lives, readable by its owner only
            assert secret not in data, f"{secret!r} found in {path}"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert json.loads(token_file.read_text())["url"] == fake.url

    # on the wire: the password once, to the login endpoint; the token never to storage
    with_password = [r.path for r in fake.requests if quote_plus(PASSWORD).encode() in r.body]
    assert with_password == ["/api/api-token-auth/"]
    assert fake.storage_requests and all("Authorization" not in r.headers for r in fake.storage_requests)
    assert all(TOKEN not in json.dumps(r.query) for r in fake.requests)
