"""The dashboard's HTTP side (stdlib ``ThreadingHTTPServer``).

Routes: ``/`` the page; ``/static/<file>`` the page's scripts, styles and the vendored uPlot;
``/api/keys`` the charted keys, target and counters; ``/api/series?key=K`` one key's actuals,
one-step-ahead trail and latest forecast with its interval (epoch ms times). Everything the
page needs is served from the package: nothing is fetched from the web.
"""

from __future__ import annotations

import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson

from stream_lstm.dashboard.store import SeriesStore

log = logging.getLogger(__name__)

STATIC = files("stream_lstm.dashboard") / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".LICENSE": "text/plain; charset=utf-8",
}


def static_file(path: str) -> tuple[bytes, str] | None:
    """The bytes and content type of a packaged static file; None for anything else."""
    parts = [p for p in path.split("/") if p]
    if not parts or any(p in {".", ".."} or p.startswith(".") or "\\" in p for p in parts):
        return None
    suffix = "." + parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else ""
    ctype = CONTENT_TYPES.get(suffix)
    if ctype is None:
        return None
    node: Traversable = STATIC
    for p in parts:
        node = node / p
    if not node.is_file():
        return None
    return node.read_bytes(), ctype


class _Handler(BaseHTTPRequestHandler):
    server: DashboardHTTPServer
    server_version = "stream-lstm-dashboard"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        route = url.path
        if route in {"/", "/index.html"}:
            self._static("index.html")
        elif route.startswith("/static/"):
            self._static(route.removeprefix("/static/"))
        elif route == "/api/keys":
            self._json(HTTPStatus.OK, self.server.store.overview())
        elif route == "/api/series":
            keys = parse_qs(url.query).get("key")
            if not keys:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "give the key: /api/series?key=K"})
                return
            data = self.server.store.series(keys[0])
            if data is None:
                self._json(
                    HTTPStatus.NOT_FOUND,
                    {"error": f"key {keys[0]!r} is not charted", "keys": self.server.store.keys()},
                )
            else:
                self._json(HTTPStatus.OK, data)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {route}"})

    def _static(self, name: str) -> None:
        found = static_file(name)
        if found is None:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such file: {name}"})
            return
        body, ctype = found
        self._send(HTTPStatus.OK, body, ctype)

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        body = orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)
        self._send(status, body, "application/json")

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


class DashboardHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr: str, port: int, store: SeriesStore) -> None:
        self.store = store
        if ":" in addr:  # an IPv6 address such as ::1
            self.address_family = socket.AF_INET6
        super().__init__((addr, port), _Handler)


class Dashboard:
    """The HTTP server over a store, serving in a background thread once started."""

    def __init__(self, store: SeriesStore, addr: str = "127.0.0.1", port: int = 8050) -> None:
        self.store = store
        self.httpd = DashboardHTTPServer(addr, port, store)  # binds now: a busy port fails here
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        shown = host if isinstance(host, str) else host.decode()
        if ":" in shown:
            shown = f"[{shown}]"
        return f"http://{shown}:{port}/"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="dashboard-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(10)
        self.httpd.server_close()
