"""What an analyzer may know about a model before its weights are loaded."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..hooks import BLOCK_HOOKS, GLOBAL_HOOKS


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model: enough to validate a config without loading weights.

    The capability flags say what an analyzer may rely on, so that no code outside the
    adapters asks which architecture it is looking at (`architecture` is for display).
    """

    name: str
    architecture: str  # adapter family, e.g. "llama", "gpt2", "bert", "gpt_neox", "gemma2"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    vocab_size: int
    is_causal: bool  # True for decoder LMs with an unembedding (has the `logits` hook point)
    max_positions: int
    #: sublayer outputs are added to the residual and the sum normalised (BERT): no additive residual
    post_norm: bool = False
    #: attention and MLP both read resid_pre and both add to it (GPT-NeoX/Pythia, GPT-J)
    parallel_blocks: bool = False
    #: the MLP has a gate and an up projection (`mlp.up` exists beside `mlp.pre`)
    gated_mlp: bool = False
    #: a norm after the last block (`final.scale` exists)
    has_final_norm: bool = True
    #: attn.out = sum over heads of z_h W_O[h] (+ bias): per-head direct attribution is exact
    heads_sum_to_attn_out: bool = True
    #: the final logits pass through tanh soft-capping (Gemma-2): logits are not linear in `final`
    logit_softcap: float | None = None

    @property
    def is_causal_lm(self) -> bool:
        return self.is_causal

    @property
    def has_unembed(self) -> bool:
        return self.is_causal

    def block_sites(self) -> tuple[str, ...]:
        """The per-layer hook-point names (without `blocks.L.`) this model has."""
        missing = set()
        if not self.gated_mlp:
            missing.add("mlp.up")
        return tuple(s for s in BLOCK_HOOKS if s not in missing)

    def global_sites(self) -> tuple[str, ...]:
        missing = set()
        if not self.is_causal:
            missing.add("logits")
        if not self.has_final_norm:
            missing.add("final.scale")
        return tuple(s for s in GLOBAL_HOOKS if s not in missing)

    def hook_points(self) -> list[str]:
        """Every hook-point name of the model, in execution order."""
        names = ["embed"]
        for layer in range(self.n_layers):
            names.extend(f"blocks.{layer}.{site}" for site in self.block_sites())
        names.extend(s for s in self.global_sites() if s != "embed")
        return names

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
