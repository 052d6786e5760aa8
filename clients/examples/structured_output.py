"""Structured output: the answer is constrained to a JSON schema made from a pydantic model
(`response_format` with `json_schema`), and the client parses it back into that model.

    GPTSERVE_BASE_URL=http://127.0.0.1:8000/v1 GPTSERVE_API_KEY=secret python clients/examples/structured_output.py
"""
import os

from openai import OpenAI
from pydantic import BaseModel, Field


class City(BaseModel):
    # Bounds keep a small model from writing digits until max_tokens (README: Structured output).
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: int = Field(ge=0, le=100)


client = OpenAI(base_url=os.environ.get("GPTSERVE_BASE_URL", "http://127.0.0.1:8000/v1"),
                api_key=os.environ.get("GPTSERVE_API_KEY", "none").split(",")[0])
completion = client.chat.completions.parse(
    model=os.environ.get("GPTSERVE_MODEL", "SmolLM2-135M-Instruct"),
    messages=[{"role": "system", "content": "Answer in JSON."},
              {"role": "user", "content": "Describe Paris: its name, country and population in millions."}],
    response_format=City,  # sent as {"type": "json_schema", "json_schema": {..., "strict": true}}
    temperature=0,
    max_tokens=128,
)
city = completion.choices[0].message.parsed
print(repr(city))
print(f"{city.name} is in {city.country}, population {city.population_millions} million")
