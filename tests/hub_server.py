"""A loopback stand-in for the Hugging Face Hub endpoints that ``Trainer.push_to_hub`` calls.

``huggingface_hub`` 2.4 creates a repository with ``POST /api/repos/create``. ``upload_folder``
checks the metadata of README.md with ``POST /api/validate-yaml``, requests the upload mode of
each file with ``POST /api/models/{repo}/preupload/{revision}`` and commits with
``POST /api/models/{repo}/commit/{revision}`` (an NDJSON body: a header line, then one line per
file, base64-encoded for regular files). This server implements exactly these calls, keeps every
file as a regular (non-LFS) upload, records every request and returns 404 for anything else, so a
test sees any call it did not expect. Its YAML check parses the metadata as
``huggingface_hub.ModelCard`` does, which is stricter than nothing but looser than the Hub.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml
from huggingface_hub import ModelCard

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = {
    "create": re.compile(r"/api/repos/create"),
    "validate_yaml": re.compile(r"/api/validate-yaml"),
    "preupload": re.compile(rf"/api/models/{_REPO}/preupload/(?P<revision>[^/?]+)"),
    "commit": re.compile(rf"/api/models/{_REPO}/commit/(?P<revision>[^/?]+)"),
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    route: str | None
    authorization: str | None


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: dict[str, bytes] = field(default_factory=dict)


class LoopbackHub:
    """A Hub stand-in on 127.0.0.1; use as a context manager and read ``endpoint``."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.created_repos: list[str] = []
        self.commits: list[Commit] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def unexpected_requests(self) -> list[RecordedRequest]:
        return [request for request in self.requests if request.route is None]

    # -- request handling ------------------------------------------------------------------------

    def _handler_class(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - the signature of BaseHTTPRequestHandler
                pass

            def _reply(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path = self.path.split("?", 1)[0]
                route, match = next(
                    ((name, m) for name, pattern in _ROUTES.items() if (m := pattern.fullmatch(path))), (None, None)
                )
                with hub._lock:
                    hub.requests.append(RecordedRequest(self.command, path, route, self.headers.get("Authorization")))
                if route is None or self.command != "POST":
                    self._reply(404, {"error": f"no route for {self.command} {path} in the loopback Hub"})
                    return
                if not (self.headers.get("Authorization") or "").startswith("Bearer "):
                    self._reply(401, {"error": "missing token"})
                    return
                status, payload = getattr(hub, f"_{route}")(match, body)
                self._reply(status, payload)

            do_GET = do_POST = do_PUT = do_HEAD = _handle

        return Handler

    def _create(self, match, body: bytes) -> tuple[int, dict]:
        request = json.loads(body)
        repo_id = f"{request['organization']}/{request['name']}" if request.get("organization") else request["name"]
        with self._lock:
            self.created_repos.append(repo_id)
        return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": hashlib.sha1(repo_id.encode()).hexdigest()}

    def _validate_yaml(self, match, body: bytes) -> tuple[int, dict]:
        content = json.loads(body)["content"]
        if not content.startswith("---\n"):
            return 400, {"errors": [{"message": "README.md has no YAML metadata block"}]}
        try:
            # Parsing model-index into EvalResult objects raises on a malformed entry.
            ModelCard(content, ignore_metadata_errors=False)
        except (ValueError, yaml.YAMLError) as error:
            return 400, {"errors": [{"message": f"invalid metadata: {error}"}]}
        return 200, {"errors": [], "warnings": []}

    def _preupload(self, match, body: bytes) -> tuple[int, dict]:
        if match["repo"] not in self.created_repos:
            return 404, {"error": f"repository {match['repo']} not found"}
        files = json.loads(body)["files"]
        return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}

    def _commit(self, match, body: bytes) -> tuple[int, dict]:
        if match["repo"] not in self.created_repos:
            return 404, {"error": f"repository {match['repo']} not found"}
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        commit = Commit(repo_id=match["repo"], revision=match["revision"], summary=header["summary"])
        for line in lines:
            if line["key"] == "file":
                value = line["value"]
                if value.get("encoding") != "base64":
                    return 400, {"error": f"unsupported encoding {value.get('encoding')!r} for {value['path']}"}
                commit.files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] != "header":
                return 400, {"error": f"unsupported commit operation {line['key']!r}"}
        with self._lock:
            self.commits.append(commit)
            number = len(self.commits)
        oid = hashlib.sha1(f"{match['repo']}@{number}".encode()).hexdigest()
        return 200, {"commitUrl": f"{self.endpoint}/{match['repo']}/commit/{oid}", "commitOid": oid, "pullRequestUrl": None}
