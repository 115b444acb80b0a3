"""A small threaded HTTP server on 127.0.0.1 that serves files with ranges.

Used by the remote-file tests and ``benchmarks/bench_remote.py``: it answers
``HEAD`` and ``GET`` with ``Range: bytes=a-b`` (206 responses), counts every
request, can add a fixed latency to each, and can require a bearer token (to
check that credentials never reach error messages). Binds to loopback only.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


@dataclass
class Served:
    """A running server: its base URL and what it has been asked."""

    url: str
    root: Path
    latency: float = 0.0
    token: str | None = None
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str | None = None) -> int:
        """Number of requests so far (of one method, or all)."""
        with self.lock:
            return sum(1 for m, _, _ in self.requests if method in (None, m))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    @property
    def bytes_sent(self) -> int:
        """Bytes asked for by ranged GETs so far."""
        with self.lock:
            total = 0
            for _, _, rng in self.requests:
                m = _RANGE.match(rng or "")
                if m and m.group(2):
                    total += int(m.group(2)) - int(m.group(1)) + 1
            return total


def _handler(served: Served) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            return

        def _file(self) -> Path | None:
            with served.lock:
                served.requests.append(
                    (self.command, self.path, self.headers.get("Range"))
                )
            if served.latency:
                time.sleep(served.latency)
            if served.token is not None and (
                self.headers.get("Authorization") != f"Bearer {served.token}"
            ):
                self._empty(401)
                return None
            path = (served.root / self.path.lstrip("/").split("?")[0]).resolve()
            if served.root.resolve() not in path.parents or not path.is_file():
                self._empty(404)
                return None
            return path

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self) -> None:
            path = self._file()
            if path is None:
                return
            self.send_response(200)
            self.send_header("Content-Length", str(path.stat().st_size))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()

        def do_GET(self) -> None:
            path = self._file()
            if path is None:
                return
            size = path.stat().st_size
            m = _RANGE.match(self.headers.get("Range", ""))
            start, stop = 0, size - 1
            if m:
                start = int(m.group(1))
                stop = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
            with open(path, "rb") as fh:
                fh.seek(start)
                body = fh.read(max(0, stop - start + 1))
            self.send_response(206 if m else 200)
            if m:
                self.send_header("Content-Range", f"bytes {start}-{stop}/{size}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def serve(
    root: str | os.PathLike[str], *, latency: float = 0.0, token: str | None = None
) -> Iterator[Served]:
    """Serve ``root`` on 127.0.0.1 (a free port) while the block runs."""
    served = Served("", Path(root), latency, token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    server.daemon_threads = True
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
