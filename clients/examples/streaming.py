"""Print an answer as it is generated (server-sent events), then the token usage.

    GPTSERVE_BASE_URL=http://127.0.0.1:8000/v1 GPTSERVE_API_KEY=secret python clients/examples/streaming.py
"""
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("GPTSERVE_BASE_URL", "http://127.0.0.1:8000/v1"),
                api_key=os.environ.get("GPTSERVE_API_KEY", "none").split(",")[0])
stream = client.chat.completions.create(
    model=os.environ.get("GPTSERVE_MODEL", "SmolLM2-135M-Instruct"),
    messages=[{"role": "system", "content": "You are a helpful assistant."},
              {"role": "user", "content": "Write a haiku about the sea."}],
    max_tokens=64,
    stream=True,
    stream_options={"include_usage": True},  # a last chunk with no choices carries the usage
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print(f"\n[{chunk.usage.completion_tokens} tokens]")
