"""The contract one architecture family fulfils to join the hook-point vocabulary."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn

from ...hooks import HookPoint, HookSite
from ..attention import PATTERN_ATTRIBUTE, register_attention
from ..info import ModelInfo


def split_heads(n_heads: int) -> tuple:
    """A (to_canonical, from_canonical) pair for [b, pos, h*d] <-> [b, pos, h, d]."""

    def to_canonical(raw: torch.Tensor) -> torch.Tensor:
        return raw.view(*raw.shape[:-1], n_heads, raw.shape[-1] // n_heads)

    def from_canonical(canonical: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        return canonical.reshape(raw.shape)

    return to_canonical, from_canonical


class Adapter:
    """Maps one transformers architecture family onto the hook-point vocabulary.

    Subclasses name the modules (`blocks`, `attention`, projections); this base class turns
    them into `HookSite`s, installs the pattern HookPoints and the attention implementation.
    Adding an architecture means writing one subclass and listing it in `adapters/__init__`.
    """

    architecture: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]

    def __init__(self, hf_model: nn.Module, info: ModelInfo):
        self.hf_model = hf_model
        self.info = info
        hf_model.config._attn_implementation = register_attention()
        for layer in range(info.n_layers):
            attention = self.attention_module(layer)
            if not isinstance(getattr(attention, PATTERN_ATTRIBUTE, None), HookPoint):
                attention.add_module(PATTERN_ATTRIBUTE, HookPoint())
        self.sites = self.build_sites()

    # --- what each architecture names -------------------------------------------------
    @staticmethod
    def info_from_config(name: str, config) -> ModelInfo:
        raise NotImplementedError

    def blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def attention_module(self, layer: int) -> nn.Module:
        """The module that calls the attention function (it receives the pattern HookPoint)."""
        raise NotImplementedError

    def attention_output_projection(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def mlp_output_projection(self, layer: int) -> nn.Module:
        raise NotImplementedError

    def final_module(self) -> nn.Module | None:
        """The final norm (or the module whose output is the final hidden state)."""
        raise NotImplementedError

    def unembed_module(self) -> nn.Module | None:
        return None

    # --- shared ------------------------------------------------------------------------
    def build_sites(self) -> dict[str, HookSite]:
        n_heads = self.info.n_heads
        to_heads, from_heads = split_heads(n_heads)
        blocks = self.blocks()
        sites: dict[str, HookSite] = {"embed": HookSite(blocks[0], "input")}
        for layer in range(self.info.n_layers):
            prefix = f"blocks.{layer}."
            attention = self.attention_module(layer)
            sites[prefix + "resid_pre"] = HookSite(blocks[layer], "input")
            sites[prefix + "attn.pattern"] = HookSite(
                getattr(attention, PATTERN_ATTRIBUTE), "output", head_axis=1, pos_axis=2
            )
            sites[prefix + "attn.z"] = HookSite(
                self.attention_output_projection(layer), "input", to_heads, from_heads, head_axis=2
            )
            sites[prefix + "attn.out"] = HookSite(self.attention_output_projection(layer), "output")
            sites[prefix + "mlp.post"] = HookSite(self.mlp_output_projection(layer), "input")
            sites[prefix + "mlp.out"] = HookSite(self.mlp_output_projection(layer), "output")
            sites[prefix + "resid_post"] = HookSite(blocks[layer], "output")
        final = self.final_module()
        sites["final"] = (
            HookSite(final, "output") if final is not None else sites[f"blocks.{self.info.n_layers - 1}.resid_post"]
        )
        unembed = self.unembed_module()
        if unembed is not None:
            sites["logits"] = HookSite(unembed, "output")
        return sites

    @property
    def supports_forward_from(self) -> bool:
        return False

    @contextlib.contextmanager
    def starting_at(self, layer: int) -> Iterator[None]:
        """Within the block, a forward pass given `inputs_embeds = resid_pre[layer]` runs
        only blocks layer.. (the ones below cannot change). Used by batched sweeps."""
        raise NotImplementedError(f"{self.architecture} cannot start a pass at a later layer")
        yield  # pragma: no cover

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding of a residual-stream tensor (logit lens)."""
        final, unembed = self.final_module(), self.unembed_module()
        if unembed is None:
            raise NotImplementedError(f"{self.info.name} has no unembedding (not a causal LM)")
        return unembed(final(resid) if final is not None else resid)


@contextlib.contextmanager
def truncated_layers(owner: nn.Module, attribute: str, layer: int) -> Iterator[None]:
    """Temporarily replace `owner.attribute` (a ModuleList) by its slice from `layer` on."""
    original = getattr(owner, attribute)
    setattr(owner, attribute, nn.ModuleList(list(original)[layer:]))
    try:
        yield
    finally:
        setattr(owner, attribute, original)
