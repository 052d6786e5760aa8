"""clients/examples/ run as a user runs them (subprocesses, settings from the environment)
against a real gptserve process with an API key, and print real answers."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys

import pytest

from tests.live_server import API_KEY, REPO, SERVED_NAMES

EXAMPLES = REPO / "clients" / "examples"
MODEL = SERVED_NAMES[0]


@pytest.fixture(scope="module")
def server(live_server):
    return live_server


def run_example(server, *argv: str) -> str:
    env = {**os.environ, "GPTSERVE_BASE_URL": f"{server.url}/v1", "GPTSERVE_API_KEY": API_KEY,
           "GPTSERVE_MODEL": MODEL}
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_every_example_reads_its_settings_from_the_environment():
    names = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh"))
    assert names == ["async_client.py", "curl.sh", "streaming.py", "structured_output.py", "sync.py", "tools.py"]
    for name in names:
        text = (EXAMPLES / name).read_text()
        assert "GPTSERVE_BASE_URL" in text and "GPTSERVE_API_KEY" in text, name


def test_sync(server):
    out = run_example(server, sys.executable, str(EXAMPLES / "sync.py"))
    assert "The capital of France is Paris." in out  # greedy
    assert "completion tokens]" in out


def test_async_client(server):
    out = run_example(server, sys.executable, str(EXAMPLES / "async_client.py"))
    answers = [line[3:] for line in out.splitlines() if line.startswith("A: ")]
    assert len(answers) == 3 and all(a.strip() for a in answers), out
    assert "Paris" in answers[0]


def test_streaming(server):
    out = run_example(server, sys.executable, str(EXAMPLES / "streaming.py"))
    text, _, usage = out.rpartition("\n[")
    assert text.strip(), out
    assert usage.rstrip().endswith("tokens]") and int(usage.split()[0]) > 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(server):
    out = run_example(server, "bash", str(EXAMPLES / "curl.sh"))
    assert f'"id":"{MODEL}"' in out
    assert "The capital of France is Paris." in out
    stream = out.split("# POST /chat/completions, streamed", 1)[1]
    assert stream.count("data: ") > 3 and stream.rstrip().endswith("data: [DONE]")


def test_structured_output(server):
    out = run_example(server, sys.executable, str(EXAMPLES / "structured_output.py"))
    first = out.splitlines()[0]
    assert first.startswith("City(") and "name=" in first and "population_millions=" in first, out


def test_tools(server):
    out = run_example(server, sys.executable, str(EXAMPLES / "tools.py"))
    call = next(line for line in out.splitlines() if line.startswith("tool call: get_weather("))
    arguments = ast.literal_eval(call.removeprefix("tool call: get_weather(").removesuffix(")"))
    assert isinstance(arguments.get("city"), str) and arguments["city"]
    assert out.splitlines()[-1].strip(), "no final answer after the tool result"
