"""`gptserve chat`: a terminal chat with a running gptserve (or any OpenAI-compatible server).

Streams each answer as it is generated and keeps the conversation's history. Commands:
/reset clears the history, /exit (or Ctrl-D) leaves.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptserve chat", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the server's /v1 base URL")
    parser.add_argument("--api-key", default=os.environ.get("GPTSERVE_API_KEY", "").split(",")[0] or "none",
                        help="API key (default: the first of GPTSERVE_API_KEY)")
    parser.add_argument("--model", default=None, help="model name (default: the server's first)")
    parser.add_argument("--system", default=None, help="a system prompt")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args(argv)

    from openai import APIConnectionError, APIStatusError, AuthenticationError, OpenAI, OpenAIError

    client = OpenAI(base_url=args.url, api_key=args.api_key)
    try:
        model = args.model or client.models.list().data[0].id
    except AuthenticationError:
        print(f"the server at {args.url} refused the API key ({'none given' if args.api_key == 'none' else 'wrong key'}): "
              f"pass --api-key KEY or set GPTSERVE_API_KEY", file=sys.stderr)
        return 1
    except APIStatusError as exc:  # it answered, with an error
        print(f"the server at {args.url} answered {exc.status_code}: {exc.message}", file=sys.stderr)
        return 1
    except (APIConnectionError, OpenAIError) as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    start = [{"role": "system", "content": args.system}] if args.system else []
    history = list(start)
    print(f"chatting with {model} at {args.url} — /reset clears the history, /exit leaves")
    while True:
        try:
            user = input("> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if user in ("/exit", "/quit"):
            return 0
        if user == "/reset":
            history = list(start)
            continue
        if not user:
            continue
        history.append({"role": "user", "content": user})
        answer = ""
        try:
            stream = client.chat.completions.create(model=model, messages=history, stream=True,
                                                    temperature=args.temperature, max_tokens=args.max_tokens)
            for chunk in stream:
                piece = chunk.choices[0].delta.content if chunk.choices else None
                if piece:
                    answer += piece
                    print(piece, end="", flush=True)
        except KeyboardInterrupt:  # stop this answer, keep the chat (closing the stream aborts it)
            print(" [interrupted]", end="")
        except OpenAIError as exc:
            print(f"[error: {exc}]", end="")
            history.pop()
            print()
            continue
        print()
        history.append({"role": "assistant", "content": answer})


if __name__ == "__main__":
    sys.exit(main())
