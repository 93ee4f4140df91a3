"""An in-memory Codabench for tests: the API on one local port, signed-URL storage on another.

It speaks just enough of Codabench's API for :mod:`cpx.submit.codabench`, as strict as the real
server (codalab/codabench ``src/apps/api/``) wherever cpx depends on it: ``POST /api/datasets/``
answers 400 without ``file_size``; login takes the username or the account's e-mail, while
submissions are owned by the username (``GET /api/my_profile/`` tells it); a submission reaches
the leaderboard only through ``submission_leaderboard_connection`` (which replaces the owner's
previous entry, or answers 403 under an automatic rule); the used counts of a phase leave out
Failed submissions only. It records every request so tests can count calls and inspect what
reached storage::

    with FakeCodabench() as fake:
        client = CodabenchClient(fake.url, token=fake.token)
        ...
        fake.inject("POST", "/api/submissions/", "html500")

Storage lives on a second server because a real signed URL points at another host, and
the client must reach it without the API token.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Union
from urllib.parse import parse_qs, urlsplit

# "drop", "html500", ("slow", seconds) then a normal answer, (status, json_body)
# or (status, raw_text, content_type); "lose": the request takes effect, its answer is lost (the
# connection closes unanswered); ("trickle", seconds): the normal answer, one byte every that many seconds
Action = Union[str, tuple]

LIMIT_PAGE = (b"<!DOCTYPE html><html><head><title>Server Error (500)</title></head>"
              b"<body><h1>Server Error (500)</h1></body></html>")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes


@dataclass
class FakeCodabench:
    username: str = "alice"
    email: str = "alice@example.org"
    password: str = "s3cret"
    token: str = "tok-alice"
    competition_id: int = 42
    # each poll of a new submission moves one step along this list
    statuses: list = field(default_factory=lambda: ["Submitted", "Running", "Scoring", "Finished"])
    final_scores: dict = field(default_factory=lambda: {"fscore": "0.7200000000"})
    column_titles: dict = field(default_factory=lambda: {"fscore": "Mean F-score"})
    # when set, a finished submission gets one child per entry with that final status
    child_statuses: Optional[list] = None
    can_make: tuple = (True, None)
    # the phases' leaderboard rule: "add_delete" (the default: participants choose their entry)
    # or an automatic one such as "force_best", where participants may not choose
    leaderboard_rule: str = "add_delete"

    def __post_init__(self):
        self.lock = threading.Lock()
        self.tokens = {self.token: self.username}
        self.leaderboard_id = 3
        self.phases = [
            {"id": 7, "index": 0, "name": "Development", "status": "Current", "has_max_submissions": True,
             "max_submissions_per_day": 5, "max_submissions_per_person": 100,
             "used_submissions_per_day": 0, "used_submissions_per_person": 0},
            {"id": 8, "index": 1, "name": "Final", "status": "Next", "has_max_submissions": True,
             "max_submissions_per_day": 1, "max_submissions_per_person": 3,
             "used_submissions_per_day": 0, "used_submissions_per_person": 0},
        ]
        self.datasets: dict[str, dict] = {}
        self.storage: dict[str, bytes] = {}
        self.storage_requests: list[Recorded] = []
        self.submissions: dict[int, dict] = {}
        self.requests: list[Recorded] = []
        self._next_id = 1000
        self._injected: dict[tuple[str, str], list[Action]] = {}
        self._api: Optional[ThreadingHTTPServer] = None
        self._store: Optional[ThreadingHTTPServer] = None
        self._threads: list[threading.Thread] = []

    # -- lifecycle

    def start(self) -> "FakeCodabench":
        self._api = _serve(self, _ApiHandler)
        self._store = _serve(self, _StorageHandler)
        for server in (self._api, self._store):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in (self._api, self._store):
            if server is not None:
                server.shutdown()
                server.server_close()
        for thread in self._threads:
            thread.join(timeout=2)

    def __enter__(self) -> "FakeCodabench":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._api.server_address[1]}"

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self._store.server_address[1]}"

    # -- test controls

    def inject(self, method: str, path: str, *actions: Action) -> None:
        """Answer the next calls to ``method path`` with these, in order, then normally."""
        with self.lock:
            self._injected.setdefault((method.upper(), path), []).extend(actions)

    def count(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.method == method.upper() and r.path == path)

    def add_submission(self, *, owner: str, phase: int = 7, status: str = "Finished",
                       parent: Optional[int] = None, scores: Optional[dict] = None,
                       on_leaderboard: bool = False) -> int:
        with self.lock:
            sid = self._new_id()
            self.submissions[sid] = self._record(sid, owner, phase, status, parent, scores or {})
            if on_leaderboard:
                self.submissions[sid]["leaderboard"] = self.leaderboard_id
            if parent is not None and parent in self.submissions:
                self.submissions[parent]["children"].append(sid)
                self.submissions[parent]["has_children"] = True
            return sid

    def leaderboard_entries(self, phase: int = 7) -> list[int]:
        """Ids of the submissions on the phase's leaderboard."""
        with self.lock:
            return sorted(s["id"] for s in self.submissions.values()
                          if s["phase"] == phase and s["leaderboard"] is not None)

    # -- internals, called with the lock held

    def _phase_view(self, phase: dict, user: str) -> dict:
        """A phase as the server shows it to ``user``: the stored counts are what was used
        before the test; the user's own top-level submissions that did not fail add to them."""
        used = sum(1 for s in self.submissions.values() if s["owner"] == user and s["phase"] == phase["id"]
                   and s["parent"] is None and s["status"] != "Failed")
        return {**phase, "used_submissions_per_day": phase["used_submissions_per_day"] + used,
                "used_submissions_per_person": phase["used_submissions_per_person"] + used}

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _record(self, sid, owner, phase, status, parent, scores, script=None) -> dict:
        return {"id": sid, "pk": sid, "owner": owner, "phase": phase, "status": status,
                "status_details": None, "parent": parent, "children": [], "has_children": False,
                "created_when": f"2024-01-01 00:{sid % 60:02d}", "filename": "submission.zip",
                "scores": _score_rows(scores), "leaderboard": None,
                "_script": list(script or [])}

    def _advance(self, sub: dict) -> None:
        if not sub["_script"]:
            return
        sub["status"] = sub["_script"].pop(0)
        if sub["status"] != "Finished" or sub["_script"]:
            return
        if self.child_statuses:
            for i, child_status in enumerate(self.child_statuses):
                cid = self._new_id()
                child = self._record(cid, sub["owner"], sub["phase"], child_status, sub["id"],
                                     self.final_scores if child_status == "Finished" else {})
                if child_status == "Failed":
                    child["status_details"] = f"task {i} crashed"
                self.submissions[cid] = child
                sub["children"].append(cid)
            sub["has_children"] = True
        else:
            sub["scores"] = _score_rows(self.final_scores)


def _serve(fake: FakeCodabench, handler: type) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.fake = fake  # type: ignore[attr-defined]
    return server


class _Base(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    @property
    def fake(self) -> FakeCodabench:
        return self.server.fake  # type: ignore[attr-defined]

    def _read(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    trickle: Optional[float] = None  # seconds between the bytes of the answer, when set

    def _send(self, status: int, body: Any = None, content_type: str = "application/json") -> None:
        if isinstance(body, (bytes, str)):
            payload = body.encode() if isinstance(body, str) else body
        else:
            payload = b"" if body is None else json.dumps(body).encode()
        if self.trickle:
            head = (f"HTTP/1.1 {status} OK\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n").encode()
            try:
                for i in range(len(head + payload)):
                    self.wfile.write((head + payload)[i:i + 1])
                    self.wfile.flush()
                    time.sleep(self.trickle)
            except OSError:
                pass  # the client gave up
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _StorageHandler(_Base):
    def do_PUT(self) -> None:
        body = self._read()
        parts = urlsplit(self.path)
        with self.fake.lock:
            self.fake.storage_requests.append(Recorded("PUT", parts.path, parse_qs(parts.query),
                                                       dict(self.headers.items()), body))
            if self.headers.get("Authorization"):
                # as S3 does: a signed URL plus another auth scheme is an error
                self._send(400, "<Error><Code>InvalidArgument</Code>"
                                "<Message>Only one auth mechanism allowed</Message></Error>", "application/xml")
                return
            if "signature" not in parse_qs(parts.query):
                self._send(403, "<Error><Code>AccessDenied</Code></Error>", "application/xml")
                return
            self.fake.storage[parts.path] = body
        self._send(200, b"", "text/plain")


class _ApiHandler(_Base):
    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        body = self._read()
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        fake = self.fake
        with fake.lock:
            fake.requests.append(Recorded(method, path, query, dict(self.headers.items()), body))
            queue = fake._injected.get((method, path))
            action = queue.pop(0) if queue else None
        if isinstance(action, tuple) and action[0] == "slow":
            time.sleep(action[1])
            action = None
        if isinstance(action, tuple) and action[0] == "trickle":
            self.trickle = action[1]
            action = None
        lose = action == "lose"
        if lose:
            action = None
        if action == "drop":
            self.close_connection = True
            return
        if action == "html500":
            self._send(500, LIMIT_PAGE, "text/html; charset=utf-8")
            return
        if isinstance(action, tuple):
            self._send(*action)
            return

        if path == "/api/api-token-auth/" and method == "POST":
            self._login(body)
            return
        auth = self.headers.get("Authorization", "")
        if not auth:
            self._send(403, {"detail": "Authentication credentials were not provided."})
            return
        user = fake.tokens.get(auth[len("Token "):]) if auth.startswith("Token ") else None
        if user is None:
            self._send(403, {"detail": "Invalid token."})
            return
        with fake.lock:
            status, payload = self._route(method, path, query, body, user)
        if lose:
            self.close_connection = True
            return
        self._send(status, payload, "text/html" if isinstance(payload, str) else "application/json")

    def _login(self, body: bytes) -> None:
        fake = self.fake
        if self.headers.get("Content-Type", "").startswith("application/json"):
            form = json.loads(body or b"{}")
        else:
            form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        missing = {k: ["This field is required."] for k in ("username", "password") if not form.get(k)}
        if missing:
            self._send(400, missing)
        elif form["username"] in (fake.username, fake.email) and form["password"] == fake.password:
            # as Django's auth backend configured by Codabench: the e-mail works as the login name
            self._send(200, {"token": fake.token})
        else:
            self._send(400, {"non_field_errors": ["Unable to log in with provided credentials."]})

    def _route(self, method: str, path: str, query: dict, body: bytes, user: str) -> tuple[int, Any]:
        fake = self.fake
        seg = [s for s in path.split("/") if s]
        if not path.endswith("/"):
            return 404, "<html><title>Not Found</title></html>"
        if method == "GET" and seg[:2] == ["api", "competitions"] and len(seg) == 3:
            if seg[2] != str(fake.competition_id):
                return 404, {"detail": "Not found."}
            return 200, {"id": fake.competition_id, "title": "Fake challenge",
                         "phases": [fake._phase_view(p, user) for p in fake.phases]}
        if method == "GET" and path == "/api/my_profile/":
            return 200, {"id": 1, "username": user, "email": fake.email if user == fake.username else None,
                         "display_name": None}
        if method == "GET" and seg[:2] == ["api", "phases"] and len(seg) == 4 and seg[3] == "get_leaderboard":
            return self._leaderboard(int(seg[2]) if seg[2].isdigit() else -1)
        if (method == "POST" and seg[:2] == ["api", "submissions"] and len(seg) == 4
                and seg[3] == "submission_leaderboard_connection"):
            return self._connect(int(seg[2]) if seg[2].isdigit() else -1, user)
        if method == "GET" and seg[:2] == ["api", "can_make_submission"] and len(seg) == 3:
            can, reason = fake.can_make
            return 200, {"can": can, "reason": reason}
        if method == "POST" and path == "/api/datasets/":
            data = json.loads(body or b"{}")
            errors = {k: ["This field is required."] for k in ("type", "request_sassy_file_name") if not data.get(k)}
            if errors:
                return 400, errors
            # as the real view does: the size is needed to check the user's storage quota
            if not isinstance(data.get("file_size"), (int, float)) or isinstance(data.get("file_size"), bool):
                return 400, {"file_size": ["This field is required."]}
            key = str(uuid.uuid4())
            name = data["request_sassy_file_name"]
            fake.datasets[key] = {"key": key, "name": data.get("name"), "type": data["type"],
                                  "file_size": data.get("file_size"), "completed": False,
                                  "competition": data.get("competition"), "file_name": data.get("file_name"),
                                  "object": f"/bucket/{key}/{name}", "owner": user}
            return 201, {"key": key, "sassy_url": f"{fake.storage_url}/bucket/{key}/{name}?signature=abc"}
        if method == "PUT" and seg[:3] == ["api", "datasets", "completed"] and len(seg) == 4:
            dataset = fake.datasets.get(seg[3])
            if dataset is None or dataset["owner"] != user:
                return 404, {"detail": "Not found."}
            dataset["completed"] = True
            return 200, {"key": seg[3]}
        if method == "POST" and path == "/api/submissions/":
            return self._create_submission(json.loads(body or b"{}"), user)
        if method == "GET" and path == "/api/submissions/":
            subs = list(fake.submissions.values())
            if "phase" in query:
                subs = [s for s in subs if str(s["phase"]) == query["phase"][0]]
            subs.sort(key=lambda s: s["id"], reverse=True)
            return 200, [_public(s) for s in subs]
        if method == "GET" and seg[:2] == ["api", "submissions"] and len(seg) in (3, 4):
            sub = fake.submissions.get(int(seg[2])) if seg[2].isdigit() else None
            if sub is None:
                return 404, {"detail": "Not found."}
            if len(seg) == 4:
                if seg[3] != "get_details":
                    return 404, {"detail": "Not found."}
                columns = [{"key": k, "title": t, "index": i} for i, (k, t) in enumerate(fake.column_titles.items())]
                return 200, {"logs": [], "leaderboards": [{"title": "Results", "key": "main", "columns": columns}]}
            fake._advance(sub)
            return 200, _public(sub)
        return 404, {"detail": "Not found."}

    def _create_submission(self, data: dict, user: str) -> tuple[int, Any]:
        fake = self.fake
        phase = next((p for p in fake.phases if p["id"] == data.get("phase")), None)
        if phase is None:
            return 400, {"phase": [f'Invalid pk "{data.get("phase")}" - object does not exist.']}
        dataset = fake.datasets.get(data.get("data"))
        if dataset is None:
            return 400, {"data": ["Object with key does not exist."]}
        if not dataset["completed"] or dataset["object"] not in fake.storage:
            return 400, {"data": ["upload not completed"]}
        sid = fake._new_id()
        fake.submissions[sid] = fake._record(sid, user, phase["id"], "Submitting", None, {}, fake.statuses)
        return 201, {"id": sid, "phase": phase["id"], "data": dataset["key"], "status": "Submitting",
                     "filename": dataset["object"].rsplit("/", 1)[-1]}


    def _connect(self, sid: int, user: str) -> tuple[int, Any]:
        fake = self.fake
        sub = fake.submissions.get(sid)
        if sub is None:
            return 404, {"detail": "Not found."}
        if sub["owner"] != user:
            return 403, {"detail": "You cannot perform this action, contact the competition organizer!"}
        if fake.leaderboard_rule != "add_delete":
            return 403, {"detail": "Users are not allowed to edit the leaderboard on this Competition"}
        for other in fake.submissions.values():
            if other["phase"] == sub["phase"] and other["owner"] == user:
                other["leaderboard"] = None
        targets = [fake.submissions[c] for c in sub["children"]] if sub["has_children"] else [sub]
        for target in targets:
            target["leaderboard"] = fake.leaderboard_id
        return 200, {}

    def _leaderboard(self, phase_id: int) -> tuple[int, Any]:
        fake = self.fake
        if not any(p["id"] == phase_id for p in fake.phases):
            return 404, {"detail": "Not found."}
        columns = [{"id": i + 1, "key": k, "title": t, "index": i, "sorting": "desc", "precision": 4,
                    "hidden": False, "computation": None, "computation_indexes": None}
                   for i, (k, t) in enumerate(fake.column_titles.items())]
        primary = columns[0]["key"]
        rows = [s for s in fake.submissions.values() if s["phase"] == phase_id and s["leaderboard"] is not None
                and not s["has_children"]]
        rows.sort(key=lambda s: (-max((float(x["score"]) for x in s["scores"] if x["column_key"] == primary),
                                      default=float("-inf")), s["created_when"]))
        out = []
        for s in rows:
            mine = [x for x in fake.submissions.values() if x["owner"] == s["owner"] and x["phase"] == phase_id
                    and x["parent"] is None]
            out.append({"id": s["id"], "owner": s["owner"], "fact_sheet_answers": None, "slug_url": "",
                        "organization": None, "num_entries": len(mine), "last_entry_date": "2024-01-01",
                        "scores": [{**x, "score": str(round(float(x["score"]), 4)), "task_id": 1}
                                   for x in s["scores"]]})
        return 200, {"title": "Results", "id": phase_id, "submissions": out, "fact_sheet_keys": None,
                     "tasks": [{"name": "Segmentation", "id": 1, "colWidth": len(columns), "columns": columns}]}


def _score_rows(scores: dict) -> list:
    return [{"id": i + 1, "index": i, "column_key": k, "score": v} for i, (k, v) in enumerate(scores.items())]


def _public(sub: dict) -> dict:
    return {k: v for k, v in sub.items() if not k.startswith("_")}


# --------------------------------------------------------------------------------------------
# A helper the Codabench test modules share (the fixtures, `fake` and `logged_in`, are in conftest.py)


def cpx(capsys, *args, stdin=None, monkeypatch=None):
    """Run the CLI in-process: (exit code, stdout, stderr); ``stdin`` answers prompts."""
    import io
    import sys

    from cpx.cli import main

    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err
