"""A loopback server speaking the part of the ModelScope Hub API that `modelscope.snapshot_download`
uses, over git repositories, so the real client can be tested here: no ModelScope-compatible
server can be installed on this machine, and the client is the thing under test.

    GET /api/v1/models/{owner}/{name}/repo/files?Revision=R&Recursive=True   file list at R (JSON)
    GET /api/v1/models/{owner}/{name}/repo?Revision=R&FilePath=P             the file's bytes at R

R is a branch, tag or commit of the repository under `root/{owner}/{name}`; an unknown model,
revision or file is a 404, as on the Hub. Each request's path and Authorization header are kept
in `requests_seen` so a test can check what the client sent."""
from __future__ import annotations

import functools
import hashlib
import json
import re
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

MODELS = "/api/v1/models/"
ROUTES = (("/repo/files", "list"), ("/repo", "file"))


def _git(repo: Path, *args: str) -> bytes | None:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True)
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=None)  # a commit's files never change; hashing them once per listing is slow
def _files_at(repo: Path, commit: str) -> list[dict]:
    entries = []
    for line in _git(repo, "ls-tree", "-r", "-z", commit).decode().split("\0"):
        if line:
            path = line.split("\t", 1)[1]
            content = _git(repo, "show", f"{commit}:{path}")
            entries.append({"Path": path, "Name": Path(path).name, "Type": "blob", "Size": len(content),
                            "Sha256": hashlib.sha256(content).hexdigest()})
    return entries


class ModelScopeHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests_seen: list[dict] = []
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> "ModelScopeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: ModelScopeHub

    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        self.server.requests_seen.append({"path": url.path, "query": query,
                                          "authorization": self.headers.get("Authorization")})
        route = next(((url.path[len(MODELS):-len(suffix)], action) for suffix, action in ROUTES
                      if url.path.startswith(MODELS) and url.path.endswith(suffix)), None)
        if route is None:
            return self._send_json(404, {"Code": 404, "Message": f"no such endpoint {url.path}"})
        model, action = unquote(route[0]), route[1]
        repo = self.server.root / model
        if not (repo / ".git").is_dir():
            return self._send_json(404, {"Code": 10010205001, "Success": False, "Message": f"no model {model}"})
        commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{query.get('Revision', 'master')}^{{commit}}")
        if commit is None:
            return self._send_json(404, {"Code": 10010205002, "Success": False,
                                         "Message": f"model {model} has no revision {query.get('Revision')}"})
        commit = commit.decode().strip()
        if action == "list":
            return self._send_json(200, {"Code": 200, "Success": True, "Data": {"Files": _files_at(repo, commit)}})
        content = _git(repo, "show", f"{commit}:{query.get('FilePath', '')}")
        if content is None:
            return self._send_json(404, {"Code": 404, "Message": f"no file {query.get('FilePath')} at {commit}"})
        self._send_file(content)

    def _send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_file(self, content: bytes) -> None:
        """The bytes from the start of a `bytes=N-` range (the form a resuming client sends), else all."""
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(match.group(1)) if match else 0
        if start and start >= len(content):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(content)}")
            self.send_header("Content-Length", "0")
            return self.end_headers()
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(content) - start))
        self.end_headers()
        self.wfile.write(content[start:])
