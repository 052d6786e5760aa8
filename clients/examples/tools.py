"""Tool calling: the model is made to call `get_weather` (tool_choice names it), we run the
function, send its result back as a `tool` message, and the model answers with it.

    GPTSERVE_BASE_URL=http://127.0.0.1:8000/v1 GPTSERVE_API_KEY=secret python clients/examples/tools.py
"""
import json
import os

from openai import OpenAI

MODEL = os.environ.get("GPTSERVE_MODEL", "SmolLM2-135M-Instruct")
TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "the city's name"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}]


def get_weather(city: str, unit: str = "celsius") -> dict:
    return {"city": city, "temperature": 18 if unit == "celsius" else 64, "unit": unit, "sky": "cloudy"}


client = OpenAI(base_url=os.environ.get("GPTSERVE_BASE_URL", "http://127.0.0.1:8000/v1"),
                api_key=os.environ.get("GPTSERVE_API_KEY", "none").split(",")[0])
messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
response = client.chat.completions.create(
    model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=128,
    tool_choice={"type": "function", "function": {"name": "get_weather"}},  # or "auto" / "required"
)
message = response.choices[0].message
messages.append(message.model_dump(exclude_none=True))
for call in message.tool_calls or []:
    arguments = json.loads(call.function.arguments)
    print(f"tool call: {call.function.name}({arguments})")
    result = get_weather(**arguments)
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
if not message.tool_calls:
    raise SystemExit(f"the model called no tool: {message.content!r}")

final = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS, temperature=0, max_tokens=96)
print(final.choices[0].message.content)
