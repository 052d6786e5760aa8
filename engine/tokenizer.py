"""Tokenizer: a Hugging Face ``tokenizers.Tokenizer`` plus the model's chat template.

Built from a Hugging Face folder (tokenizer.json, tokenizer_config.json) or from a GGUF file's
``tokenizer.ggml.*`` metadata, following llama.cpp's llama-vocab.cpp for the pre-tokenizer.
"""
from __future__ import annotations

import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

# Tokens that end an assistant turn in common chat templates; each counts as an eos id when the
# vocabulary has it and the template writes it.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|end|>", "<end_of_turn>")

# GGUF token types (llama.cpp's llama_token_type).
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4
# past this many characters encode (and decode, a quarter as many ids) run without the GIL, so a
# caller on a worker thread leaves the event loop free; the short path stays the cheaper call
LONG_TEXT_CHARS = 16384

# llama.cpp splits on these before byte-level BPE (llama-vocab.cpp, by tokenizer.ggml.pre).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# "gpt2": GPT-2's own regex (ByteLevel's built-in); "digits": each digit alone, then GPT-2's.
_GPT2_PRE = ("default", "gpt2", "gpt-2", "mpt", "olmo", "jais", "trillion")
_DIGITS_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "pixtral")
_QWEN2_PRE = ("qwen2", "deepseek-r1-qwen", "stablelm2")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table used to spell byte-level BPE tokens."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


def gguf_pre_tokenizer(pre: str | None):
    """The pre-tokenizer llama.cpp uses for ``tokenizer.ggml.pre``; ValueError if unknown."""
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre is None or pre in _GPT2_PRE:
        return byte_level
    if pre in _DIGITS_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    for names, split in ((_LLAMA3_PRE, _LLAMA3_SPLIT), (_QWEN2_PRE, _QWEN2_SPLIT)):
        if pre in names:
            return pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
    known = _GPT2_PRE + _DIGITS_PRE + _LLAMA3_PRE + _QWEN2_PRE
    raise ValueError(f"unsupported GGUF pre-tokenizer {pre!r}; supported: {', '.join(known)}")


def tokenizer_from_gguf_metadata(md: dict) -> HFTokenizer:
    """A byte-level BPE ``tokenizers.Tokenizer`` from GGUF metadata (tokenizer.ggml.model "gpt2")."""
    model = md.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ValueError(f"unsupported GGUF tokenizer model {model!r}; supported: gpt2 (byte-level BPE)")
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    token_types: list[int] = md.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    alphabet = set(bytes_to_unicode().values())
    spell = bytes_to_unicode()
    # A byte-level vocabulary spells every token in the byte alphabet; respell any that is not
    # (as transformers' GGUF converter does) so BPE can reach it.
    vocab = {
        (t if set(t) <= alphabet else "".join(spell[b] for b in t.encode("utf-8"))): i for i, t in enumerate(tokens)
    }
    merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", [])]
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=False))
    tok.pre_tokenizer = gguf_pre_tokenizer(md.get("tokenizer.ggml.pre"))
    tok.decoder = decoders.ByteLevel()
    # Control tokens (<|im_start|> …) must match whole in templated text and be skippable in decode;
    # user-defined ones match whole but are ordinary text.
    special = [t for t, ty in zip(tokens, token_types) if ty == TOKEN_TYPE_CONTROL and set(t) <= alphabet]
    user = [t for t, ty in zip(tokens, token_types) if ty == TOKEN_TYPE_USER_DEFINED and t in vocab]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    return tok


def _token_content(value) -> str | None:
    """tokenizer_config.json spells tokens as a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    """HF's tojson: unlike Jinja's own, it neither HTML-escapes nor sorts keys."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` (transformers' marker of the assistant's tokens
    for training masks, in templates such as SmolLM3's): rendered as its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class Tokenizer:
    """Text ↔ token ids, token bytes for logprobs, and the chat template."""

    def __init__(
        self,
        tokenizer: HFTokenizer,
        *,
        bos_token: str | None,
        eos_token: str | None,
        add_bos_token: bool,
        chat_template: str | None,
        is_byte_level: bool,
        extra_eos_token_ids: tuple[int, ...] = (),
    ) -> None:
        self._tok = tokenizer
        self._plain: HFTokenizer | None = None  # a copy that reads special tokens' text as text
        self._is_byte_level = is_byte_level
        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        self._template: jinja2.Template | None = None
        self.vocab_size: int = tokenizer.get_vocab_size(with_added_tokens=True)
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.bos_token_id: int | None = tokenizer.token_to_id(bos_token) if bos_token else None
        self.add_bos_token = bool(add_bos_token and self.bos_token_id is not None)
        self.chat_template = chat_template
        eos = [tokenizer.token_to_id(eos_token)] if eos_token else []
        eos += list(extra_eos_token_ids)
        for text in END_OF_TURN_TOKENS:
            token_id = tokenizer.token_to_id(text)
            if token_id is not None and chat_template and text in chat_template:
                eos.append(token_id)
        self.eos_token_ids: list[int] = [i for i in dict.fromkeys(eos) if i is not None]

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, chat_template: str | None = None) -> Tokenizer:
        """From a ``.gguf`` file or a Hugging Face folder; ``chat_template`` overrides the model's."""
        if os.path.isdir(path):
            return cls._from_hf_folder(path, chat_template)
        return cls._from_gguf(path, chat_template)

    @classmethod
    def _from_gguf(cls, path: str, chat_template: str | None) -> Tokenizer:
        from engine.loader.gguf import read_gguf

        md = read_gguf(path, with_tensors=False).metadata
        is_byte_level = md.get("tokenizer.ggml.model") != "llama"
        if is_byte_level:
            tok = tokenizer_from_gguf_metadata(md)
        else:  # SentencePiece-style vocabulary (Gemma, Llama 2, Phi-3)
            from engine.spm_tokenizer import sentencepiece_from_gguf_metadata

            tok = sentencepiece_from_gguf_metadata(md)
        tokens = md["tokenizer.ggml.tokens"]

        def token_at(key: str) -> str | None:
            return tokens[md[key]] if key in md and 0 <= md[key] < len(tokens) else None

        eot = md.get("tokenizer.ggml.eot_token_id")
        return cls(
            tok,
            bos_token=token_at("tokenizer.ggml.bos_token_id"),
            eos_token=token_at("tokenizer.ggml.eos_token_id"),
            # llama.cpp's default: no BOS for BPE vocabularies, BOS for SentencePiece ones, unless the file says
            add_bos_token=bool(md.get("tokenizer.ggml.add_bos_token", not is_byte_level)),
            chat_template=chat_template or md.get("tokenizer.chat_template"),
            is_byte_level=is_byte_level,
            extra_eos_token_ids=(int(eot),) if eot is not None else (),
        )

    @classmethod
    def _from_hf_folder(cls, folder: str, chat_template: str | None) -> Tokenizer:
        tok = HFTokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        cfg: dict = {}
        cfg_path = os.path.join(folder, "tokenizer_config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                cfg = json.load(f)
        template = cfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        jinja_path = os.path.join(folder, "chat_template.jinja")
        if os.path.exists(jinja_path):
            with open(jinja_path, encoding="utf-8") as f:
                template = f.read()
        extra_eos: list[int] = []
        gen_path = os.path.join(folder, "generation_config.json")
        if os.path.exists(gen_path):
            with open(gen_path, encoding="utf-8") as f:
                gen_eos = json.load(f).get("eos_token_id")
            extra_eos = gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
        bos = _token_content(cfg.get("bos_token"))
        add_bos = cfg.get("add_bos_token")
        if add_bos is None:  # no flag: does tokenizer.json's post-processor add it?
            add_bos = bos is not None and tok.token_to_id(bos) in tok.encode("", add_special_tokens=True).ids
        decoder = json.loads(tok.to_str()).get("decoder") or {}
        return cls(
            tok,
            bos_token=bos,
            eos_token=_token_content(cfg.get("eos_token")),
            add_bos_token=add_bos,
            chat_template=chat_template or template,
            is_byte_level=decoder.get("type") == "ByteLevel",
            extra_eos_token_ids=tuple(int(i) for i in extra_eos),
        )

    # ---- text <-> ids -------------------------------------------------------------------
    @property
    def special_token_texts(self) -> list[str]:
        """The text of each special (control) token, e.g. "<|im_start|>", longest first."""
        texts = {t.content for t in self._tok.get_added_tokens_decoder().values() if t.special and t.content}
        return sorted(texts, key=len, reverse=True)

    def encode(self, text: str, add_special_tokens: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``; special tokens written in the text match whole, unless
        ``parse_special`` is False: then "<|im_start|>" is the ordinary text it spells.

        BOS is prepended only when the model asks for it (add_bos_token) and it is not there yet.
        """
        tok = self._tok
        if not parse_special:
            if self._plain is None:
                plain = HFTokenizer.from_str(tok.to_str())
                plain.encode_special_tokens = True
                self._plain = plain
            tok = self._plain
        if len(text) > LONG_TEXT_CHARS:  # encode_batch lets go of the GIL: the event loop runs meanwhile
            ids = tok.encode_batch([text], add_special_tokens=add_special_tokens)[0].ids
        else:
            ids = tok.encode(text, add_special_tokens=add_special_tokens).ids
        if add_special_tokens and self.add_bos_token and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; incomplete UTF-8 at the end decodes to U+FFFD."""
        if len(ids) > LONG_TEXT_CHARS // 4:  # as encode: without the GIL
            return self._tok.decode_batch([list(ids)], skip_special_tokens=skip_special_tokens)[0]
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (OpenAI logprobs ``bytes``)."""
        token = self._tok.id_to_token(int(token_id))
        if token is None:
            return b""
        if self._is_byte_level:
            if all(c in self._byte_decoder for c in token):
                return bytes(self._byte_decoder[c] for c in token)
            return token.encode("utf-8")  # an added token such as <|im_end|>
        # sentencepiece spelling: ▁ for space, <0xAB> for a raw byte
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return bytes([int(token[3:5], 16)])
        return token.replace("\u2581", " ").encode("utf-8")

    def token_text(self, token_id: int) -> str:
        """A token as logprobs show it, e.g. " Paris" (partial UTF-8 shows as U+FFFD)."""
        return self.token_bytes(token_id).decode("utf-8", errors="replace")

    # ---- chat template ------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = True,
        tools: list[dict] | None = None,
        **kwargs,
    ) -> str:
        """Render the chat template (Jinja2 sandbox, HF conventions) to the prompt text."""
        if not self.chat_template:
            raise ValueError("model has no chat template")
        try:
            if self._template is None:
                env = ImmutableSandboxedEnvironment(
                    trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols", _GenerationTag]
                )
                env.filters["tojson"] = _tojson
                env.globals["raise_exception"] = _raise_exception
                env.globals["strftime_now"] = _strftime_now
                self._template = env.from_string(self.chat_template)
            context = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or ""}
            context.update(kwargs)
            return self._template.render(
                messages=messages, tools=tools, add_generation_prompt=add_generation_prompt, **context
            )
        except jinja2.exceptions.TemplateError as exc:
            raise ValueError(f"chat template error: {exc}") from exc
