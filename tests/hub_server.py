"""A tiny stand-in for the Hugging Face Hub's upload API, for contract tests of `hf_mae.hub`.

This is a CONTRACT test double, not a faithful Hub: it implements only the endpoints that the real
`huggingface_hub` client (2.x) calls for `HfApi.create_repo` + `create_branch` + `upload_folder`, answers
every file as a "regular" (base64, in the commit payload) upload so no LFS/Xet storage is involved, and
records what arrived so tests can assert on it. Anything else answers 404 and is listed in `unexpected`.
Unlike the real Hub it never reports a file as already present, so re-pushing makes a new commit.

Endpoints: POST /api/repos/create, POST /api/validate-yaml, GET /api/whoami-v2, GET /api/{type}s/{ns}/{name},
POST /api/{type}s/{ns}/{name}/branch/{branch}, POST /api/{type}s/{ns}/{name}/preupload/{revision},
POST /api/{type}s/{ns}/{name}/commit/{revision} (NDJSON).

`SilentServer` is the other failure double: it accepts TCP connections and never answers a byte.
"""

import base64
import hashlib
import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    repo_id: str
    repo_type: str = "model"
    private: bool = False
    branches: set = field(default_factory=lambda: {"main"})
    commits: list = field(default_factory=list)  # dicts: revision, summary, description, files {path: bytes}
    created_with: dict = field(default_factory=dict)  # the repos/create payload


class FakeHub:
    """Start with `start()` (or as a context manager); `url` is the endpoint to give the client.

    Knobs for failure tests: `conflict` = (status, json body) answered by repos/create for every repo that is
    not a model repo already (a repo of another type); `drop_commits` = True (or a set of repo ids) closes the
    connection without an answer on every commit request (to those repos): a network failure mid-push;
    `hang_commits` = True: commit requests get no answer until the server stops; `create_errors` = a list of
    HTTP statuses answered, one each, by the next repos/create requests (e.g. [503, 503]: two transient
    failures); `echo_auth` = an HTTP status answered to repos/create whose JSON body and X-Error-Message header
    echo the request's Authorization header (a server that leaks what it was sent); `commit_status` = an HTTP
    status answered to every commit request (e.g. 500: a Hub that keeps failing).
    """

    def __init__(self, token: str):
        self.token = token
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.unexpected: list[tuple[str, str]] = []
        self.unauthorized: list[tuple[str, str]] = []
        self.conflict: tuple[int, dict] | None = None
        self.drop_commits: bool | set[str] = False
        self.hang_commits = False
        self.create_errors: list[int] = []
        self.echo_auth: int | None = None
        self.commit_status: int | None = None
        self._stopping = threading.Event()
        self.commit_attempts: Counter[str] = Counter()  # repo id -> commit requests received
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- inspection helpers ------------------------------------------------------------------------------
    def repo(self, repo_id: str, repo_type: str = "model") -> FakeRepo:
        return self.repos[(repo_type, repo_id)]

    def add_repo(self, repo_id: str, repo_type: str = "model", **kwargs) -> FakeRepo:
        repo = FakeRepo(repo_id, repo_type, **kwargs)
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files at `revision` after all commits (later commits overwrite earlier ones)."""
        out = {}
        for commit in self.repo(repo_id).commits:
            if commit["revision"] == revision:
                out.update(commit["files"])
        return out


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub

    def log_message(self, format, *args):  # keep test output clean
        pass

    # --- plumbing ----------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: dict, error_code: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if error_code:
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", payload.get("error", ""))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {self.fake.token}"

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        fake = self.fake
        with fake._lock:
            fake.requests.append((method, path))
        body = self._body() if method == "POST" else b""
        if not self._authorized():
            fake.unauthorized.append((method, path))
            self._send(401, {"error": "Invalid credentials in Authorization header"})
            return
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if method == "GET" and path == "/api/whoami-v2":
            self._send(200, {"type": "user", "name": "tester", "orgs": []})
        elif method == "GET" and len(parts) == 4 and parts[0] == "api" and parts[1].endswith("s"):  # repo info
            repo = fake.repos.get((parts[1][:-1], f"{parts[2]}/{parts[3]}"))
            if repo is None:
                self._send(404, {"error": "Repository not found"}, "RepoNotFound")
            else:
                self._send(200, {"id": repo.repo_id, "private": repo.private, "sha": "0" * 40})
        elif method == "POST" and path == "/api/repos/create":
            self._create_repo(json.loads(body))
        elif method == "POST" and path == "/api/validate-yaml":
            self._send(200, {"errors": [], "warnings": []})
        elif method == "POST" and len(parts) == 6 and parts[0] == "api" and parts[1].endswith("s"):
            repo_type, repo_id, action, revision = parts[1][:-1], f"{parts[2]}/{parts[3]}", parts[4], parts[5]
            repo = fake.repos.get((repo_type, repo_id))
            if repo is None:
                self._send(404, {"error": "Repository not found"}, "RepoNotFound")
            elif action == "branch":
                if revision in repo.branches:
                    self._send(409, {"error": "Reference already exists"})
                else:
                    repo.branches.add(revision)
                    self._send(200, {})
            elif revision not in repo.branches:
                self._send(404, {"error": f"Invalid rev id: {revision}"}, "RevisionNotFound")
            elif action == "preupload":
                files = json.loads(body)["files"]
                self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                            "oid": None} for f in files]})
            elif action == "commit":
                self._commit(repo, revision, body)
            else:
                self._unexpected(method, path)
        else:
            self._unexpected(method, path)

    def _unexpected(self, method: str, path: str) -> None:
        self.fake.unexpected.append((method, path))
        self._send(404, {"error": f"fake hub does not implement {method} {path}"})

    # --- endpoints ---------------------------------------------------------------------------------------
    def _create_repo(self, payload: dict) -> None:
        fake = self.fake
        if fake.echo_auth is not None:
            echoed = f"cannot create the repo for Authorization: {self.headers.get('Authorization')}"
            self._send(fake.echo_auth, {"error": echoed}, "EchoedAuthorization")
            return
        with fake._lock:
            status = fake.create_errors.pop(0) if fake.create_errors else None
        if status is not None:
            self._send(status, {"error": f"transient failure {status}"})
            return
        name, org = payload["name"], payload.get("organization")
        repo_id = f"{org}/{name}" if org else name
        repo_type = payload.get("type") or "model"
        existing = fake.repos.get((repo_type, repo_id))
        if existing is not None:
            prefix = "" if repo_type == "model" else f"{repo_type}s/"
            self._send(409, {"error": f"You already created this {repo_type} repo",
                             "url": f"{fake.url}/{prefix}{repo_id}"})
            return
        if fake.conflict is not None:
            status, answer = fake.conflict
            self._send(status, answer)
            return
        repo = fake.add_repo(repo_id, repo_type, private=payload.get("visibility") == "private")
        repo.created_with = payload
        self._send(200, {"url": f"{fake.url}/{repo_id}", "name": repo_id})

    def _commit(self, repo: FakeRepo, revision: str, body: bytes) -> None:
        fake = self.fake
        with fake._lock:
            fake.commit_attempts[repo.repo_id] += 1
        if fake.commit_status is not None:
            self._send(fake.commit_status, {"error": f"commit failed with {fake.commit_status}"})
            return
        if fake.hang_commits:
            fake._stopping.wait()  # read the whole request, then never answer
            return
        if fake.drop_commits is True or repo.repo_id in (fake.drop_commits or ()):
            self.close_connection = True  # read the whole request, then hang up without a word
            self.wfile.flush()
            self.connection.close()
            return
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        files = {}
        for item in lines[1:]:
            if item["key"] != "file" or item["value"].get("encoding") != "base64":
                self._send(400, {"error": f"fake hub only accepts regular base64 files, got {item['key']}"})
                return
            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
        oid = hashlib.sha1(body).hexdigest()
        repo.commits.append({"revision": revision, "summary": header["summary"],
                             "description": header.get("description", ""), "files": files, "oid": oid})
        self._send(200, {"commitUrl": f"{fake.url}/{repo.repo_id}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})


class SilentServer:
    """A TCP endpoint on 127.0.0.1 that accepts every connection and never sends a byte (a hung proxy, a stalled
    load balancer): a client without read timeouts waits forever. `connections` counts what it accepted."""

    def __init__(self):
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self._held: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-server", daemon=True)
        self.connections = 0

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(connection)  # keep it open, say nothing
            self.connections += 1

    def start(self) -> "SilentServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        for connection in self._held:
            connection.close()
        self._socket.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
