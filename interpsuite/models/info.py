"""What an analyzer may know about a model before its weights are loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model: enough to validate a config without loading weights."""

    name: str
    architecture: str  # adapter family: "llama", "gpt2" or "bert"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    is_causal: bool  # True for decoder LMs with an unembedding (has the `logits` hook point)
    max_positions: int

    def to_dict(self) -> dict:
        return asdict(self)

    def contract_dict(self) -> dict:
        """The subset written to results.json (see the result contract in DESIGN.md)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_model": self.d_model,
            "d_mlp": self.d_mlp,
        }
