"""A real `gptserve serve` subprocess for tests: started on a free port, polled until /ready,
its output in a log file; a clear failure (with the log's tail) when it exits or never gets ready."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(log_path: Path, num_chars: int = 4000) -> str:
    try:
        return log_path.read_text(errors="replace")[-num_chars:]
    except FileNotFoundError:
        return "(no log)"


def launch_server(args: list[str], env: dict[str, str] | None, log_path: Path) -> tuple[str, subprocess.Popen]:
    """`python -m server serve --host 127.0.0.1 --port <free> *args`, not waited for: (url, proc).
    ``env`` is added to this process's environment.

    One compute thread unless ``env`` says otherwise: the suite runs the test process, servers and
    installs side by side on 2 cores, and a 2-thread OpenMP region waits at its barrier for a
    thread whose core is busy elsewhere (a whole time slice per op: a decode step went from
    milliseconds to over a second on this machine under such load)."""
    port = free_port()
    cmd = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", proc


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 300, poll: float = 0.2) -> None:
    """Until GET /ready is 200; fails the test (killing the process) if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"gptserve exited with {proc.returncode} before it was ready "
                        f"({' '.join(map(str, proc.args))}); log {log_path}:\n{log_tail(log_path)}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            stop_server(proc, timeout=0)
            pytest.fail(f"gptserve was not ready within {timeout:.0f} s "
                        f"({' '.join(map(str, proc.args))}); log {log_path}:\n{log_tail(log_path)}")
        time.sleep(poll)


def start_server(args: list[str], env: dict[str, str] | None = None, *, log_path: Path,
                 timeout: float = 300, poll: float = 0.2) -> tuple[str, subprocess.Popen, Path]:
    """Start gptserve with ``args`` (after --host/--port) and wait until it is ready: (url, proc, log_path)."""
    url, proc = launch_server(args, env, log_path)
    wait_ready(url, proc, log_path, timeout=timeout, poll=poll)
    return url, proc, log_path


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM (a drain), then SIGKILL after ``timeout`` seconds; at once with timeout 0."""
    if proc.poll() is not None:
        return
    if timeout > 0:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()


@contextmanager
def running_server(args: list[str], env: dict[str, str] | None = None, *, log_path: Path,
                   timeout: float = 300, poll: float = 0.2,
                   stop_timeout: float = 30) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """``start_server`` as a context manager; the process is stopped on exit."""
    url, proc = launch_server(args, env, log_path)
    try:
        wait_ready(url, proc, log_path, timeout=timeout, poll=poll)
        yield url, proc, log_path
    finally:
        stop_server(proc, timeout=stop_timeout)
