"""Run ``lbnl serve`` as a child process: start it, wait until it answers, stop it gracefully.

Used by the tests and the load benchmark, and handy in notebooks: the server gets its own
process (and model), the caller talks to it over loopback like any client.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from contextlib import contextmanager
from types import TracebackType
from typing import Iterator, Mapping

_READY = re.compile(r"lbnl serve: .* on (http://\S+) ")


class ServerProcess:
    """``python -m lbnl.cli serve ARGS --port 0`` with its output in ``log_path``.

    Args:
        args: ``lbnl serve`` arguments (``--model``...); ``--port 0`` is added unless given.
        log_path: file receiving the server's stdout and stderr.
        env: extra environment variables.
        startup_timeout: seconds to wait for the model to load and ``/health`` to answer.
    """

    def __init__(self, args: list[str], log_path: str | os.PathLike[str], env: Mapping[str, str] | None = None,
                 startup_timeout: float = 180.0):
        self.args = list(args) if "--port" in args else [*args, "--port", "0"]
        self.log_path = Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> "ServerProcess":
        """Spawn the process without waiting (so several servers can load at once)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "lbnl", "serve", *self.args],
                                         stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def log(self) -> str:
        """Everything the server printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self) -> "ServerProcess":
        """Block until ``GET /health`` answers 200; raise with the server's log if it exits or hangs."""
        import httpx

        if self.proc is None:
            self.start()
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lbnl serve exited with code {self.proc.returncode}:\n{self.log()}")
            if not self.url and (match := _READY.search(self.log())):
                self.url = match.group(1)
            if self.url:
                try:
                    if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"lbnl serve did not become ready in {self.startup_timeout:g} s:\n{self.log()}")

    def terminate(self) -> None:
        """Send SIGTERM: the server refuses new connections and finishes the requests in flight."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait up to ``timeout`` s (then kill); return the exit code."""
        if self.proc is None:
            return 0
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "ServerProcess":
        return self.wait_ready()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextmanager
def serving(*servers: ServerProcess) -> Iterator[tuple[ServerProcess, ...]]:
    """Start every server (they load their models in parallel), wait until each answers, stop them all after."""
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()
