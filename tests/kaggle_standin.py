"""A local stand-in for the Kaggle competition-submission API, for tests.

It lets the real ``kaggle`` client (2.2.5, kagglesdk 0.1.38) run
``KaggleApi.competition_submit`` end to end without contacting Kaggle.

Routing the client here
-----------------------
``KAGGLE_API_ENVIRONMENT=TEST`` is *not* enough: kagglesdk alone maps TEST to
``http://localhost:7777``, but ``KaggleApi.build_kaggle_client`` always passes
an explicit env (PROD unless ``KAGGLE_API_ENVIRONMENT=LOCALHOST``, which it turns
into ``--local``), so with TEST the client still calls ``https://api.kaggle.com``.
``client_env`` therefore sets ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` (endpoint
``http://localhost``, port 80) and points ``HTTP(S)_PROXY`` at this server:
requests sends plain-HTTP calls here in absolute form
(``POST http://localhost/api/v1/... HTTP/1.1``), and any HTTPS call becomes a
``CONNECT`` that the stand-in refuses, so nothing can reach the internet.
``HOME`` and ``KAGGLE_CONFIG_DIR`` point into a temporary folder, because
kagglesdk reads ``~/.kaggle/access_token`` and ``~/.kaggle/credentials.json``
through ``expanduser`` whatever ``KAGGLE_CONFIG_DIR`` says.

Wire protocol (kagglesdk/kaggle_http_client.py, competition_api_service.py)
-------------------------------------------------------------------------
Every RPC is ``POST {endpoint}/api/v1/{service}/{method}`` (no ``/api`` on
PROD) with a camelCase JSON body and HTTP Basic auth (username, key):

* ``competitions.CompetitionApiService/StartSubmissionUpload``
  body ``{"competitionName", "fileName", "contentLength",
  "lastModifiedEpochSeconds"}`` -> ``{"token": str, "createUrl": str}``.
* the client then ``PUT``s the whole file to ``createUrl`` (own requests
  session, not the RPC one, so no auth header); 200/201 = done, 503 = "try
  again", anything else = failed. ``competition_submit`` never resumes.
* ``competitions.CompetitionApiService/CreateSubmission``
  body ``{"competitionName", "blobFileTokens", "submissionDescription",
  "sandbox"?}`` -> ``{"message": str, "ref": int}``.

Errors are JSON ``{"code": <status>, "message": <text>}`` with that HTTP
status, as Kaggle sends them; the client raises
``requests.exceptions.HTTPError(message)`` for those.
"""
from __future__ import annotations

import base64
import errno
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

DEFAULT_PORT = 7777
SERVICE = "competitions.CompetitionApiService"
_RPC_PATH = re.compile(r"^(?:/api)?/v1/(?P<service>[\w.]+)/(?P<method>\w+)$")
_UPLOAD_PATH = re.compile(r"^/upload/(?P<token>[\w-]+)$")


class PortTaken(RuntimeError):
    """The stand-in's port is already in use (tests should pytest.skip)."""


class KaggleStandIn:
    """Fake Kaggle submission API on ``127.0.0.1:port``; use as a context manager.

    Args:
        port: TCP port (0 picks a free one; read it back from ``.port``).
        fail_with: ``(status, message)``: every RPC answers that HTTP status with
            Kaggle's JSON error body, e.g. ``(403, "You must accept ...")``.
        fail_upload: the upload URL answers 500, so ``competition_submit``
            returns a response whose ``.message`` is the "upload failed" text.

    Attributes:
        uploads: bytes of each successful upload, in order.
        submissions: one dict per CreateSubmission call: ``competition``,
            ``blob_token``, ``description``, ``sandbox``, ``user`` (Basic-auth
            name), ``upload`` (bytes stored under that token, or None), ``body``.
        starts: JSON bodies of the StartSubmissionUpload calls.
        requests: ``(method, path)`` of every request received, for debugging.
    """

    def __init__(self, port: int = DEFAULT_PORT, *, fail_with: tuple[int, str] | None = None,
                 fail_upload: bool = False) -> None:
        self.fail_with = fail_with
        self.fail_upload = fail_upload
        self.uploads: list[bytes] = []
        self.submissions: list[dict[str, Any]] = []
        self.starts: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self._blobs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> KaggleStandIn:
        try:
            self._server = ThreadingHTTPServer(("127.0.0.1", self._port), _make_handler(self))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortTaken(f"port {self._port} on 127.0.0.1 is not available: {e}") from e
            raise
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kaggle-standin", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    # --- request handling (called from the handler threads) ---

    def _rpc(self, method: str, body: dict[str, Any], user: str | None) -> tuple[int, dict[str, Any]]:
        if self.fail_with is not None:
            status, message = self.fail_with
            return status, {"code": status, "message": message}
        if user is None:
            return 401, {"code": 401, "message": "Unauthenticated"}
        with self._lock:
            if method == "StartSubmissionUpload":
                self.starts.append(body)
                token = f"blob-{len(self.starts)}"
                return 200, {"token": token, "createUrl": f"http://localhost:{self.port}/upload/{token}"}
            if method == "CreateSubmission":
                competition = body.get("competitionName", "")
                token = body.get("blobFileTokens", "")
                self.submissions.append({
                    "competition": competition, "blob_token": token,
                    "description": body.get("submissionDescription"), "sandbox": body.get("sandbox", False),
                    "user": user, "upload": self._blobs.get(token), "body": body,
                })
                return 200, {"message": f"Successfully submitted to {competition}",
                             "ref": 1000 + len(self.submissions)}
        return 404, {"code": 404, "message": f"stand-in does not implement {method}"}

    def _upload(self, token: str, data: bytes) -> tuple[int, dict[str, Any]]:
        if self.fail_upload:
            return 500, {"code": 500, "message": "stand-in upload failure"}
        with self._lock:
            self._blobs[token] = data
            self.uploads.append(data)
        return 200, {}


def _make_handler(standin: KaggleStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _path(self) -> str:
            # Proxied requests carry an absolute URL ("http://localhost/api/v1/...").
            return urlsplit(self.path).path

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(parts)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _user(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                return base64.b64decode(auth[6:]).decode().split(":", 1)[0]
            if auth.startswith("Bearer ") and auth[7:]:
                return "bearer:" + auth[7:]
            return None

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            path = self._path()
            standin.requests.append((self.command, path))
            body = self._body()
            if self.command == "POST" and (m := _RPC_PATH.match(path)) and m["service"] == SERVICE:
                self._send(*standin._rpc(m["method"], json.loads(body or b"{}"), self._user()))
            elif self.command == "PUT" and (m := _UPLOAD_PATH.match(path)):
                self._send(*standin._upload(m["token"], body))
            else:
                self._send(404, {"code": 404, "message": f"stand-in: no route for {self.command} {path}"})

        do_GET = do_POST = do_PUT = _handle

        def do_CONNECT(self) -> None:
            # HTTPS through the proxy would mean the client targets the real Kaggle: refuse.
            standin.requests.append(("CONNECT", self.path))
            self.send_error(403, "kaggle stand-in refuses HTTPS tunnels")

    return Handler


def client_env(tmp_path: str | os.PathLike[str], port: int = DEFAULT_PORT) -> dict[str, str]:
    """Environment variables that point the real kaggle client at a stand-in on ``port``.

    Apply them before ``kaggle`` is imported (it reads them at import time), best in a
    subprocess built with ``isolated_environ``. Fake legacy credentials; HOME and
    KAGGLE_CONFIG_DIR under ``tmp_path`` so the real ``~/.kaggle`` is never touched.
    """
    home = Path(tmp_path) / "kaggle-home"
    config_dir = home / ".kaggle"
    config_dir.mkdir(parents=True, exist_ok=True)
    proxy = f"http://127.0.0.1:{port}"
    env = {
        "KAGGLE_API_ENVIRONMENT": "LOCALHOST",  # not TEST: KaggleApi ignores TEST (see module doc)
        "KAGGLE_USERNAME": "standin-user",
        "KAGGLE_KEY": "standin-key",
        "KAGGLE_CONFIG_DIR": str(config_dir),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
    }
    for name in ("http_proxy", "https_proxy"):  # lower-case wins in urllib, so set both
        env[name] = env[name.upper()] = proxy
    for name in ("no_proxy", "all_proxy"):  # empty value = unset for requests/urllib
        env[name] = env[name.upper()] = ""
    return env


def isolated_environ(tmp_path: str | os.PathLike[str], port: int = DEFAULT_PORT,
                     base: dict[str, str] | None = None) -> dict[str, str]:
    """A full environment for a subprocess: ``base`` (default ``os.environ``) without any
    ``KAGGLE_*`` or proxy variables of the developer's, plus ``client_env``."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if not k.startswith("KAGGLE_") and not k.lower().endswith("_proxy") and k != "REQUEST_METHOD"}
    env.update(client_env(tmp_path, port))
    return env
