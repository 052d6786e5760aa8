"""The articles' code, verbatim, with openai 0.28 (only api_base pointed at gptserve)."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.e2e.conftest import API_KEY

COMPLETION_SNIPPET = '''
import openai
openai.api_key = "{key}"
openai.api_base = "{base}"
input_text = "Write a Python function that adds two numbers."
response = openai.Completion.create(engine="davinci-codex", prompt=input_text, max_tokens=50, n=1, stop=None, temperature=0.7)
print(response.choices[0].text)
print("FINISH", response.choices[0].finish_reason)
'''

CHAT_SNIPPET = '''
import openai
openai.api_key = "{key}"
openai.api_base = "{base}"
response = openai.ChatCompletion.create(model="gpt-4", messages=[{{"role": "user", "content": "What is the capital of France? Answer in one sentence."}}], temperature=0)
print(response.choices[0].message.content)
print(response["choices"][0]["message"]["content"])
'''


def run_legacy(snippet: str, path, server_url) -> str:
    code = snippet.format(key=API_KEY, base=f"{server_url}/v1")
    env = {**os.environ, "PYTHONPATH": str(path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_legacy_completion(openai028_path, server_url):
    out = run_legacy(COMPLETION_SNIPPET, openai028_path, server_url)
    text, finish = out.rsplit("FINISH", 1)
    assert text.strip() and finish.strip() in ("length", "stop")


def test_legacy_chat(openai028_path, server_url):
    out = run_legacy(CHAT_SNIPPET, openai028_path, server_url)
    assert out.splitlines() == ["The capital of France is Paris."] * 2
