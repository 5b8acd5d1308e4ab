"""The explorer's local server: the standard library's ``ThreadingHTTPServer`` on the loopback interface only.

Routes (everything else: a 4xx JSON error, never a traceback):

- ``GET /``: the page, with the first report inlined.
- ``POST /api/plan``: body ``{"spec"?, "quantity"?, "sizes"?, "simplify"?, "term"?}`` → the report.
- ``POST /api/measure``: the same keys plus ``"candidate": "c0"`` → ``{"best_s", "median_s", "repeats", "device"}``.

Requests must be ``application/json``, at most ``MAX_BODY`` bytes, carry this server's own ``Host``
and (when sent) ``Origin``; the server parses settings and never runs code from a request.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from tnderiv.explore.page import render_page

if TYPE_CHECKING:
    from tnderiv.explore.settings import Settings, Target

MAX_BODY = 16 * 1024
LIBRARY_ERRORS = (ValueError, TypeError, KeyError, NotImplementedError)


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_host(host: str) -> str:
    """``host`` if it is a loopback address or ``localhost``; raises ``ValueError`` otherwise."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host={host!r}: the explorer binds only to a loopback address such as '127.0.0.1'") from None
    if not address.is_loopback or address.version != 4:
        raise ValueError(f"host={host!r}: the explorer binds only to an IPv4 loopback address such as '127.0.0.1', never to a network interface")
    return host


class Session:
    """Reports for one target, cached per settings (bounded), as the handlers ask for them."""

    def __init__(self, target: Target, settings: Settings) -> None:
        self.target, self.settings = target, settings
        self._reports: OrderedDict[Settings, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        # one derivation, plan or measurement at a time: the library's caches are not built for threads
        self._work = threading.Lock()

    def report(self, settings: Settings) -> dict[str, Any]:
        with self._lock:
            if settings in self._reports:
                self._reports.move_to_end(settings)
                return self._reports[settings]
        from tnderiv.explore.model import build_report

        with self._work:
            report = build_report(self.target, settings)
        with self._lock:
            self._reports[settings] = report
            while len(self._reports) > 32:
                self._reports.popitem(last=False)
        return report

    def measure(self, settings: Settings, candidate: Any) -> dict[str, Any]:
        from tnderiv.explore.measure import measure

        rows = {row["id"]: row for row in self.report(settings)["candidates"]}
        if candidate not in rows:
            raise ValueError(f"candidate={candidate!r}: expected one of {sorted(rows)}")
        with self._work:
            result = measure(self.target, settings, rows[candidate]["optimize"])
        return {"candidate": candidate, **result}


class Handler(BaseHTTPRequestHandler):
    """Serves the page and the two JSON routes of one ``Explorer``."""

    session: Session
    server_version = "tnderiv-explore"
    timeout = 30  # seconds a connection may stay idle: a stalled client does not hold a thread forever
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass  # quiet: the command line prints the address; errors go back to the page

    # ----- routing --------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._guard(self._get)

    def do_POST(self) -> None:
        self._guard(self._post)

    def _refuse(self) -> None:
        self._send_json(405, {"error": f"method {self.command} is not allowed; use GET / or POST /api/plan, /api/measure"},
                        allow="GET, POST")  # fmt: skip

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _refuse  # type: ignore[assignment]

    def _guard(self, handle: Any) -> None:
        try:
            self._check_host()
            handle()
        except RequestError as error:
            self._send_json(error.status, {"error": str(error)})
        except LIBRARY_ERRORS as error:
            self._send_json(400, {"error": str(error)})
        except Exception as error:  # noqa: BLE001 - a bug must not leak a traceback to the page
            print(f"tnderiv explore: internal error: {type(error).__name__}: {error}", file=sys.stderr)
            self._send_json(500, {"error": f"internal error ({type(error).__name__}); see the server's terminal"})

    def _check_host(self) -> None:
        host, port = self.server.server_address[:2]
        allowed = {f"{host}:{port}", f"localhost:{port}"}
        if self.headers.get("Host") not in allowed:
            raise RequestError(421, "unexpected Host header: the explorer answers only requests to its own loopback address")

    def _get(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/":
            raise RequestError(404, f"no route GET {path}; the page is at /")
        page, policy = render_page(self.session.report(self.session.settings), mode="server")
        body = page.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        # the page's own policy (with its script's nonce) again as a header, where frame-ancestors also counts
        self.send_header("Content-Security-Policy", policy + "; frame-ancestors 'none'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _post(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in ("/api/plan", "/api/measure"):
            raise RequestError(404, f"no route POST {path}; expected /api/plan or /api/measure")
        origin = self.headers.get("Origin")
        if origin is not None and origin.removeprefix("http://") != self.headers.get("Host"):
            raise RequestError(403, f"requests from origin {origin!r} are refused")
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            raise RequestError(415, "expected Content-Type: application/json")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise RequestError(411, "expected a Content-Length header") from None
        if length < 0 or length > MAX_BODY:
            raise RequestError(413, f"request body of {length} bytes; at most {MAX_BODY} bytes are accepted")
        raw = self.rfile.read(length)
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RequestError(400, f"malformed JSON: {error}") from None
        from tnderiv.explore.settings import settings_from_json

        if path == "/api/plan":
            self._send_json(200, self.session.report(settings_from_json(data)))
        else:
            settings = settings_from_json(data, extra=("candidate",))
            self._send_json(200, self.session.measure(settings, data.get("candidate")))

    def _send_json(self, status: int, payload: dict[str, Any], allow: str | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Cache-Control", "no-store")
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class ExplorerServer:
    """A running explorer: ``url``, ``serve_forever()`` (command line) or ``start()`` in a thread, ``stop()``."""

    def __init__(self, session: Session, host: str = "127.0.0.1", port: int = 0) -> None:
        host = check_host(host)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
            raise ValueError(f"port={port!r}: expected an int from 0 (any free port) to 65535")
        handler = type("BoundHandler", (Handler,), {"session": session})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.session = session
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> ExplorerServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="tnderiv-explore", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
