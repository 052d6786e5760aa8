"""Several chat completions at once with `AsyncOpenAI`: gptserve batches them together.

    GPTSERVE_BASE_URL=http://127.0.0.1:8000/v1 GPTSERVE_API_KEY=secret python clients/examples/async_client.py
"""
import asyncio
import os

from openai import AsyncOpenAI

MODEL = os.environ.get("GPTSERVE_MODEL", "SmolLM2-135M-Instruct")
QUESTIONS = ["What is the capital of France? Answer in one sentence.", "What is 2 + 2?", "Name a primary colour."]


async def ask(client: AsyncOpenAI, question: str) -> str:
    response = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=32)
    return response.choices[0].message.content


async def main() -> None:
    async with AsyncOpenAI(base_url=os.environ.get("GPTSERVE_BASE_URL", "http://127.0.0.1:8000/v1"),
                           api_key=os.environ.get("GPTSERVE_API_KEY", "none").split(",")[0]) as client:
        answers = await asyncio.gather(*(ask(client, q) for q in QUESTIONS))
    for question, answer in zip(QUESTIONS, answers):
        print(f"Q: {question}\nA: {answer}\n")


asyncio.run(main())
