"""Local inference endpoint for apps on the device (stdlib HTTP, one thread per request).

    POST /v1/infer   {"inputs": {name: nested list}, "variant": optional id,
                      "priority": "normal" (default) | "low"}
                     -> {"outputs": {name: nested list}, "variant": id, "latency_seconds": x,
                         "engine": "native" | "onnxruntime"}
                     A low-priority request while the device is hot (thermal trip) or its
                     battery critical gets 503 + Retry-After at once (not queued); normal
                     requests still run.
    GET  /v1/status  device, bundle, active variant and why, sensors, profiles, decisions
    GET  /metrics    Prometheus text of the agent's own registry

float32 outputs are widened to float64 for JSON, which is exact, and parsed back exactly.
Every client mistake is a 4xx with {"error": "..."}; nothing a client sends can crash it.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from agent.runtime import PRIORITIES, InputError, NoBundleError, PausedError, Runner, UnknownVariantError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    server_version = "edgefleet-agent"
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle on, the body waits for the client's
    # delayed ACK of the headers on a keep-alive connection: +40 ms per request on Linux.
    disable_nagle_algorithm = True
    server: "LocalApiServer"

    def log_message(self, fmt, *args):          # route access logs to logging at debug
        log.debug("%s %s", self.address_string(), fmt % args)

    # -- plumbing -----------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, close: bool = False) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), "application/json", close)

    def _error(self, status: int, message: str, close: bool = False,
                headers: dict[str, str] | None = None, **extra) -> None:
        body = json.dumps({"error": message, **extra}).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    # -- routes -------------------------------------------------------------------------
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, self.server.metrics.exposition(), self.server.metrics.content_type)
        elif self.server.metrics_only:
            self._error(404, f"no route {path}; this port serves /metrics only")
        elif path == "/v1/status":
            try:
                self._json(200, self.server.status())
            except Exception as exc:
                log.exception("status failed")
                self._error(500, f"status unavailable: {exc}")
        elif path in ("/", "/healthz"):
            self._json(200, {"ok": True})
        else:
            self._error(404, f"no route {path}")

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if self.server.metrics_only or path != "/v1/infer":
            self._drain_small()
            self._error(404, f"no route POST {path}")
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._error(411, "Content-Length is required", close=True)
            return
        try:
            length = int(length_header)
            if length < 0:
                raise ValueError
        except ValueError:
            self._error(400, "bad Content-Length", close=True)
            return
        if length > MAX_BODY_BYTES:
            # Don't read it: answer and close the connection.
            self._error(413, f"body of {length} bytes is over the {MAX_BODY_BYTES} byte limit", close=True)
            return
        body = self.rfile.read(length)
        self._infer(body)

    def _drain_small(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        if 0 < length <= MAX_BODY_BYTES:
            self.rfile.read(length)
        elif length:
            self.close_connection = True

    def _infer(self, body: bytes) -> None:
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._error(400, f"body is not valid JSON: {exc}")
            return
        if not isinstance(request, dict) or not isinstance(request.get("inputs"), dict):
            self._error(400, 'body must be a JSON object with "inputs": {name: nested list}')
            return
        variant = request.get("variant")
        if variant is not None and not isinstance(variant, str):
            self._error(400, '"variant" must be a string')
            return
        priority = request.get("priority", "normal")
        if priority not in PRIORITIES:
            self._error(400, f'"priority" must be one of {list(PRIORITIES)}')
            return
        try:
            result = self.server.runner.run(request["inputs"], variant=variant or None, priority=priority)
        except PausedError as exc:
            retry = max(1, math.ceil(exc.retry_after_seconds))
            self._error(503, str(exc), headers={"Retry-After": str(retry)}, paused=exc.reason,
                        retry_after_seconds=retry)
            return
        except InputError as exc:
            self._error(400, str(exc))
            return
        except UnknownVariantError as exc:
            self._error(404, f"unknown variant {exc.args[0]!r} (not in the installed bundle)")
            return
        except NoBundleError as exc:
            self._error(503, str(exc))
            return
        except Exception as exc:
            log.exception("inference failed")
            self._error(500, f"inference failed: {exc}")
            return
        self._json(200, {"outputs": {k: v.tolist() for k, v in result.outputs.items()},
                         "variant": result.variant, "latency_seconds": result.latency_seconds,
                         "engine": result.engine})


class LocalApiServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, runner: Runner | None, metrics,
                 status: Callable[[], dict] | None = None, metrics_only: bool = False):
        self.runner = runner
        self.metrics = metrics
        self.status = status or (lambda: {})
        self.metrics_only = metrics_only
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> "LocalApiServer":
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), name=f"http-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread:
            self._thread.join(5)
