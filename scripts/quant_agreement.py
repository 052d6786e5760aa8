"""Greedy agreement of a quantized engine with the plain one on fixed chat prompts.

    .venv/bin/python scripts/quant_agreement.py [--quantization int8] [--max-tokens 48]
    .venv/bin/python scripts/quant_agreement.py --default-vs-float32
    .venv/bin/python scripts/quant_agreement.py --default-vs-llama-server http://127.0.0.1:8392

--default-vs-float32: the default path (a GGUF file's own blocks, activations quantized per
block) against ``--dtype float32`` (the same blocks dequantized: the reference).
--default-vs-llama-server URL: the default path against a llama.cpp llama-server on the same file
(its ``/completion`` with the same prompt token ids, top_k 1, one prompt at a time).
Where the two first differ at the very first token, the first engine's gap between its two most
likely first tokens is printed: a near-tie there is decided by rounding.
"""
import argparse
import json
import urllib.request

from engine import EngineConfig, LLMEngine, SamplingParams

QUESTIONS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain gravity to a child.",
    "List three fruits.", "What is 12 times 7?", "Who wrote Hamlet?",
]


def llama_server_tokens(url: str, prompt: list[int], max_tokens: int) -> list[int]:
    body = json.dumps({"prompt": prompt, "n_predict": max_tokens, "temperature": 0, "top_k": 1,
                       "cache_prompt": False, "return_tokens": True}).encode()
    request = urllib.request.Request(f"{url.rstrip('/')}/completion", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)["tokens"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--quantization", default="int8")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--default-vs-float32", action="store_true")
    ap.add_argument("--default-vs-llama-server", metavar="URL")
    args = ap.parse_args()
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, logprobs=2)
    if args.default_vs_llama_server:
        configs = [{}]
    elif args.default_vs_float32:
        configs = [dict(dtype="float32"), {}]
    else:
        configs = [dict(quantization=None), dict(quantization=args.quantization)]
    results, first_gaps = [], []
    for config in configs:
        engine = LLMEngine(EngineConfig(model=args.model, max_model_len=2048, **config))
        tok = engine.tokenizer
        prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]
        completions = [c[0] for c in engine.generate(prompts, params)]
        results.append([c.token_ids for c in completions])
        if not first_gaps:  # the first engine's top two first tokens, per prompt
            first_gaps = [sorted(c.logprobs[0].top_logprobs.values(), reverse=True)[:2] for c in completions]
    if args.default_vs_llama_server:
        results.append([llama_server_tokens(args.default_vs_llama_server, p, args.max_tokens) for p in prompts])
    base, other = results
    for q, a, b, top in zip(QUESTIONS, base, other, first_gaps):
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        gap = f"  (first token: top two {top[0] - top[1]:.3f} apart in logprob)" if first == 0 and a != b else ""
        print(f"{'same' if a == b else 'diff'}  first divergence at token {first:3d}  {q}{gap}")
    print(f"identical: {sum(a == b for a, b in zip(base, other))}/{len(base)}")


if __name__ == "__main__":
    main()
