"""A SentencePiece-style BPE ``tokenizers.Tokenizer`` from GGUF metadata (tokenizer.ggml.model "llama").

Gemma, Llama 2, Mistral v0.1 and Phi-3 files carry their vocabulary this way: pieces spelled with
"▁" for a space, ``<0xAB>`` pieces for raw bytes (byte fallback), a score per piece, and no merge
list. BPE needs merges, so they are rebuilt from the vocabulary: every split of a piece into two
pieces that both exist is a merge, ranked by the merged piece's score (best first), as
transformers' GGUF converter and llama.cpp's tokenizer (which merges the best-scoring pair) do.
Gemma's scores do not follow its merge order; the order of the pieces in the file does, so for
Gemma the rank is the position (transformers does the same).
"""
from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
GEMMA_ARCHITECTURES = ("gemma", "gemma2", "gemma3")


def rebuild_merges(vocab: dict[str, int], rank: dict[str, float]) -> list[tuple[str, str]]:
    """Every (left, right) split of a piece into two vocabulary pieces, best-ranked merged piece first."""
    merges = []
    for piece, score in rank.items():
        splits = [(piece[:i], piece[i:]) for i in range(1, len(piece)) if piece[:i] in vocab and piece[i:] in vocab]
        splits.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges.extend((score, len(left), len(right), left, right) for left, right in splits)
    merges.sort(key=lambda m: (m[0], m[1], m[2]), reverse=True)
    return [(left, right) for _, _, _, left, right in merges]


def sentencepiece_from_gguf_metadata(md: dict) -> Tokenizer:
    """The tokenizer a ``tokenizer.ggml.model == "llama"`` file describes."""
    tokens: list[str] = list(md["tokenizer.ggml.tokens"])
    token_types: list[int] = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    is_gemma = md.get("general.architecture") in GEMMA_ARCHITECTURES
    if is_gemma:  # Gemma stores pieces of several spaces as real spaces; its text has "▁" there
        tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
        rank = {t: -i for i, t in enumerate(tokens)}
    else:
        scores = md.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        rank = dict(zip(tokens, scores))
    vocab = {t: i for i, t in enumerate(tokens)}
    unk_id = md.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=rebuild_merges(vocab, rank), unk_token=unk, fuse_unk=True,
                               byte_fallback=True))
    add_space_prefix = bool(md.get("tokenizer.ggml.add_space_prefix", not is_gemma))
    steps = [normalizers.Prepend("\u2581")] if add_space_prefix else []
    tok.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "\u2581")])
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    decode = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    special = [t for t, ty in zip(tokens, token_types) if ty == TOKEN_TYPE_CONTROL]
    user = [t for t, ty in zip(tokens, token_types) if ty == TOKEN_TYPE_USER_DEFINED]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return tok
