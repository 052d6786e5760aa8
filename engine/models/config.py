"""Architecture hyper-parameters, read from a GGUF header or a Hugging Face config.json."""
from __future__ import annotations

from dataclasses import dataclass, field

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "mistral", "qwen3", "gpt2", "gemma2", "gemma3", "phi3")


@dataclass
class ModelConfig:
    architecture: str  # one of SUPPORTED_ARCHITECTURES (SmolLM2 is "llama")
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    partial_rotary_factor: float = 1.0  # Phi-4-mini: only this fraction of each head is rotated
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2 has q/k/v biases
    hidden_act: str = "silu"  # the MLP's activation, as config.json names it (gelu_new for GPT-2)
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over each head of q and k before the rotation
    # Sliding-window attention: a token sees the last sliding_window positions (itself included) in
    # the layers marked "sliding_attention" in layer_types (every layer when layer_types is None).
    sliding_window: int | None = None
    layer_types: list[str] | None = None  # per layer: "sliding_attention" | "full_attention"
    rope_local_theta: float | None = None  # Gemma 3: the sliding layers' rope base
    query_pre_attn_scalar: float | None = None  # Gemma: scores scaled by its -1/2 power, not head_dim's
    attn_logit_softcapping: float | None = None  # scores → cap · tanh(scores / cap)
    final_logit_softcapping: float | None = None  # logits → cap · tanh(logits / cap)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    name: str = "model"  # a human name, e.g. "SmolLM2-135M-Instruct"

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError("layer_types must name one type per layer")

    @property
    def mlp_gated(self) -> bool:
        """The MLP computes act(gate) · up (Llama, Qwen, Phi-3, Gemma), not act(up) (GPT-2's)."""
        return self.architecture != "gpt2"

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of ``layer``, or None when it attends to every position."""
        if self.sliding_window is None:
            return None
        if self.layer_types is None or self.layer_types[layer] == "sliding_attention":
            return self.sliding_window
        return None
