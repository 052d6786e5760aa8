"""One chat completion with the official `openai` client, pointed at gptserve.

    GPTSERVE_BASE_URL=http://127.0.0.1:8000/v1 GPTSERVE_API_KEY=secret python clients/examples/sync.py
"""
import os

from openai import OpenAI

client = OpenAI(
    base_url=os.environ.get("GPTSERVE_BASE_URL", "http://127.0.0.1:8000/v1"),
    api_key=os.environ.get("GPTSERVE_API_KEY", "none").split(",")[0],  # any key when the server has none
)
response = client.chat.completions.create(
    model=os.environ.get("GPTSERVE_MODEL", "SmolLM2-135M-Instruct"),
    messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    temperature=0,
    max_tokens=64,
)
print(response.choices[0].message.content)
print(f"[{response.usage.prompt_tokens} prompt + {response.usage.completion_tokens} completion tokens]")
