"""The contract one architecture family fulfils to join the hook-point vocabulary."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import nn

from ...errors import HookError
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


class Adapter(ABC):
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
    @abstractmethod
    def info_from_config(name: str, config) -> ModelInfo:
        """ModelInfo from a transformers config (no weights needed)."""

    @abstractmethod
    def layer_list(self) -> tuple[nn.Module, str]:
        """(owner, attribute) of the ModuleList of blocks, e.g. (model.model, "layers")."""

    @abstractmethod
    def attention_module(self, layer: int) -> nn.Module:
        """The module that calls the attention function (it receives the pattern HookPoint)."""

    @abstractmethod
    def attention_output_projection(self, layer: int) -> nn.Module:
        """The projection whose input is `attn.z` and whose output is `attn.out`."""

    @abstractmethod
    def mlp_output_projection(self, layer: int) -> nn.Module:
        """The projection whose input is `mlp.post` and whose output is `mlp.out`."""

    @abstractmethod
    def final_module(self) -> nn.Module | None:
        """The final norm, or None where the last block's output is the final hidden state."""

    @abstractmethod
    def embeddings_pass_through(self) -> contextlib.AbstractContextManager:
        """A context in which the embedding step returns `inputs_embeds` unchanged (no position
        embeddings, no norm), so a pass can be fed the residual stream of a later layer."""

    def unembed_module(self) -> nn.Module | None:
        """The unembedding (lm_head) of causal LMs; None for encoders."""
        return None

    def blocks(self) -> nn.ModuleList:
        owner, attribute = self.layer_list()
        return getattr(owner, attribute)

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

    @contextlib.contextmanager
    def starting_at(self, layer: int) -> Iterator[None]:
        """Within the block, a forward pass given `inputs_embeds = resid_pre[layer]` runs only
        blocks layer.. (the ones below cannot change): used by batched sweeps. Hooks stay valid
        because they live on the block modules, not on their positions in the list."""
        owner, attribute = self.layer_list()
        with self.embeddings_pass_through(), truncated_layers(owner, attribute, layer):
            yield

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding of a residual-stream tensor (logit lens)."""
        final, unembed = self.final_module(), self.unembed_module()
        if unembed is None:
            raise HookError(f"{self.info.name} is an encoder without an unembedding; the logit lens needs a causal LM")
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
