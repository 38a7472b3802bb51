"""Live ``/stats``: an opt-in JSON endpoint on localhost while a stage trains (config ``monitor.port``).

Standard library only (``http.server`` in a daemon thread). Serves ``GET /stats``: the current stage, step, the
latest logged values (loss, rewards, aux loss...), expert load per MoE layer, the layer snapshot and throughput
(optimizer steps per second since the stage started). Started by the stage on the main process only, closed when the
stage ends; a port that is taken is a clear error before any training starts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)


class MonitorError(RuntimeError):
    """The monitor could not start (port taken or not allowed)."""


class Monitor:
    """A localhost HTTP server holding the latest training state of one stage."""

    def __init__(self, port: int, stage: str, host: str = "127.0.0.1") -> None:
        self.state: dict[str, Any] = {"stage": stage, "step": 0, "logs": {}, "expert_load": {}, "layer_snapshot": {},
                                      "started": time.time(), "steps_per_s": 0.0, "status": "training"}
        self._lock = threading.Lock()
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.rstrip("/") != "/stats":
                    self.send_error(404, "only /stats is served")
                    return
                body = json.dumps(monitor.snapshot(), default=str).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # keep the training log clean
                return

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise MonitorError(f"monitor.port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                               "pick a free port or remove monitor.port") from None
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="align-monitor", daemon=True)
        self._thread.start()
        logger.info("monitor: http://%s:%d/stats", host, self.port)

    def update(self, step: int, logs: dict[str, Any], **extra: Any) -> None:
        with self._lock:
            elapsed = time.time() - self.state["started"]
            self.state.update(step=step, logs=logs, steps_per_s=step / elapsed if elapsed > 0 else 0.0, **extra)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self.state, default=str))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
