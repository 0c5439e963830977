"""The contract one architecture family fulfils to join the hook-point vocabulary.

An adapter names modules (the blocks, the attention module, projections, norms); this base
class turns them into `HookSite`s. It never changes the model: the model layer installs
listeners on the named modules while the model is wrapped and removes them on `close()`.
A third-party package adds an architecture by returning its Adapter subclass from the
`interpsuite_adapters` hook.
"""

from __future__ import annotations

import dataclasses
from abc import ABC
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import HookError
from ...hooks import HookSite, SiteCall
from ..attention import heads_first_read, heads_first_write
from ..info import ModelInfo
from ..norms import NormKind, apply_norm, scale_site


def split_heads(n_heads: int) -> tuple:
    """(read, write) for a [b, pos, h*d] tensor seen as [b, pos, h, d]."""

    def read(call: SiteCall) -> torch.Tensor:
        raw = call.value
        return raw.view(*raw.shape[:-1], n_heads, raw.shape[-1] // n_heads)

    def write(call: SiteCall, canonical: torch.Tensor) -> torch.Tensor:
        return canonical.reshape(call.value.shape)

    return read, write


def derived_resid_mid(layer: int) -> tuple:
    """(read, write) of `resid_mid = resid_pre + attn.out`, living on the attn.out boundary.

    Pre-norm blocks keep the residual in a local variable, so there is no module boundary
    where resid_mid passes; writing V into it means letting the attention sublayer add
    V - resid_pre instead.
    """
    name = f"blocks.{layer}.resid_pre"

    def read(call: SiteCall) -> torch.Tensor:
        return call.state.values[name] + call.value

    def write(call: SiteCall, canonical: torch.Tensor) -> torch.Tensor:
        return canonical - call.state.values[name]

    return read, write


@dataclass(frozen=True)
class ModulePaths:
    """Where an architecture keeps each module, as dotted attribute paths.

    Architectures differ in names, not in structure, so an adapter declares names and the base
    class resolves them (one resolver, not one method per module per adapter). `blocks` and
    `final` are looked up under the first of `prefixes` that has the blocks (BERT is loaded
    bare or inside a task head); `unembed` under the loaded model; the rest inside one block.
    """

    blocks: str  # the ModuleList of blocks, e.g. "model.layers"
    attention: str  # the module that calls the attention function
    attn_z_proj: str  # the projection whose input is attn.z
    mlp: str  # the module whose output is mlp.out (added to the residual)
    mlp_pre_proj: str  # output is mlp.pre (the gate projection of gated MLPs)
    mlp_post_proj: str  # input is mlp.post
    ln1: str
    ln2: str
    final: str | None  # the final norm; None: the last block's output is the final hidden state
    unembed: str | None = "lm_head"  # None for encoders
    attn_out: str | None = None  # output is attn.out; None: the attention module's output
    mlp_up_proj: str | None = None  # output is mlp.up (gated MLPs)
    resid_mid: str | None = None  # a module whose output is resid_mid (post-norm); None: derived
    prefixes: tuple[str, ...] = ("",)


class Adapter(ABC):
    """Maps one transformers architecture family onto the hook-point vocabulary."""

    architecture: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    #: the formula of the model's norms (see interpsuite.models.norms)
    norm_kind: ClassVar[NormKind] = "rms"
    #: capability flags copied into ModelInfo (override `capabilities` where the config decides)
    post_norm: ClassVar[bool] = False
    gated_mlp: ClassVar[bool] = False
    has_final_norm: ClassVar[bool] = True
    heads_sum_to_attn_out: ClassVar[bool] = True
    #: the AutoModel class that loads it: causal LMs with a head, encoders without
    auto_class: ClassVar[str] = "AutoModelForCausalLM"
    #: the attention implementation to load it with ("eager" where SDPA cannot express the model)
    attn_implementation: ClassVar[str] = "sdpa"

    def __init__(self, hf_model: nn.Module, info: ModelInfo):
        self.hf_model = hf_model
        self.info = info
        self.sites = self.build_sites()

    # --- static description -------------------------------------------------------------
    @classmethod
    def info_from_config(cls, name: str, config) -> ModelInfo:
        """ModelInfo from a transformers config (no weights needed; flags filled by `describe`).

        Reads the field names most transformers configs share (num_hidden_layers, hidden_size,
        ...); an architecture with other names (GPT-2's n_layer, n_embd) overrides this."""
        n_heads = config.num_attention_heads
        return ModelInfo(
            name=name,
            architecture=cls.architecture,
            n_layers=config.num_hidden_layers,
            n_heads=n_heads,
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            d_model=config.hidden_size,
            d_head=getattr(config, "head_dim", None) or config.hidden_size // n_heads,
            d_mlp=config.intermediate_size,
            vocab_size=config.vocab_size,
            is_causal=cls.auto_class != "AutoModel",
            max_positions=config.max_position_embeddings,
        )

    @classmethod
    def capabilities(cls, config) -> dict[str, Any]:
        return {
            "post_norm": cls.post_norm,
            "gated_mlp": cls.gated_mlp,
            "has_final_norm": cls.has_final_norm,
            "heads_sum_to_attn_out": cls.heads_sum_to_attn_out,
        }

    @classmethod
    def describe(cls, name: str, config) -> ModelInfo:
        return dataclasses.replace(cls.info_from_config(name, config), **cls.capabilities(config))

    # --- what each architecture names -------------------------------------------------
    #: where the modules live (see ModulePaths); an adapter may instead override the methods below
    module_paths: ClassVar[ModulePaths | None] = None

    @property
    def paths(self) -> ModulePaths:
        if self.module_paths is None:
            raise HookError(
                f"adapter {type(self).__name__} sets no `module_paths`; set a ModulePaths or override "
                f"layer_list, attention_module, ... (docs/plugins.md)"
            )
        return self.module_paths

    def _root(self) -> nn.Module:
        """The first of `paths.prefixes` under which the blocks exist (a bare or a headed model)."""
        for prefix in self.paths.prefixes:
            try:
                root = attrgetter(prefix)(self.hf_model) if prefix else self.hf_model
                attrgetter(self.paths.blocks)(root)
            except AttributeError:
                continue
            return root
        raise HookError(f"{type(self.hf_model).__name__} has no {self.paths.blocks!r} under {self.paths.prefixes}")

    def _in_block(self, layer: int, path: str) -> nn.Module:
        return attrgetter(path)(self.blocks()[layer])

    def layer_list(self) -> tuple[nn.Module, str]:
        """(owner, attribute) of the ModuleList of blocks, e.g. (model.model, "layers")."""
        owner, _, attribute = self.paths.blocks.rpartition(".")
        root = self._root()
        return (attrgetter(owner)(root) if owner else root), attribute

    def attention_module(self, layer: int) -> nn.Module:
        """The module that calls the attention function (q, k, v, scores, pattern live there)."""
        return self._in_block(layer, self.paths.attention)

    def attention_output_projection(self, layer: int) -> nn.Module:
        """The projection whose input is `attn.z`."""
        return self._in_block(layer, self.paths.attn_z_proj)

    def attention_out_module(self, layer: int) -> nn.Module:
        """The module whose (first) output is `attn.out`, the value added to the residual."""
        paths = self.module_paths
        if paths is None or paths.attn_out is None:  # also for adapters that override the methods
            return self.attention_module(layer)
        return self._in_block(layer, paths.attn_out)

    def mlp_module(self, layer: int) -> nn.Module:
        """The module whose output is `mlp.out`, the value added to the residual."""
        return self._in_block(layer, self.paths.mlp)

    def mlp_input_projection(self, layer: int) -> nn.Module:
        """The projection whose output is `mlp.pre` (the gate projection of gated MLPs)."""
        return self._in_block(layer, self.paths.mlp_pre_proj)

    def mlp_up_projection(self, layer: int) -> nn.Module | None:
        """The up projection of gated MLPs (`mlp.up`); None elsewhere."""
        paths = self.module_paths
        return self._in_block(layer, paths.mlp_up_proj) if paths and paths.mlp_up_proj else None

    def mlp_output_projection(self, layer: int) -> nn.Module:
        """The projection whose input is `mlp.post`."""
        return self._in_block(layer, self.paths.mlp_post_proj)

    def ln1(self, layer: int) -> nn.Module:
        """The norm before attention (pre-norm) or after it (post-norm)."""
        return self._in_block(layer, self.paths.ln1)

    def ln2(self, layer: int) -> nn.Module:
        """The norm before the MLP (pre-norm) or after it (post-norm)."""
        return self._in_block(layer, self.paths.ln2)

    def final_module(self) -> nn.Module | None:
        """The final norm, or None where the last block's output is the final hidden state."""
        return attrgetter(self.paths.final)(self._root()) if self.paths.final else None

    def resid_mid_module(self, layer: int) -> nn.Module | None:
        """A module whose output *is* resid_mid (post-norm models); None: derived from attn.out."""
        paths = self.module_paths
        return self._in_block(layer, paths.resid_mid) if paths and paths.resid_mid else None

    def unembed_module(self) -> nn.Module | None:
        """The unembedding (lm_head) of causal LMs; None for encoders."""
        paths = self.module_paths
        return attrgetter(paths.unembed)(self.hf_model) if paths and paths.unembed else None

    def blocks(self) -> nn.ModuleList:
        owner, attribute = self.layer_list()
        return getattr(owner, attribute)

    # --- shared ------------------------------------------------------------------------
    def build_sites(self) -> dict[str, HookSite]:
        info = self.info
        blocks = self.blocks()
        sites: dict[str, HookSite] = {"embed": HookSite(blocks[0], "input", 0)}
        for layer in range(info.n_layers):
            prefix = f"blocks.{layer}."
            block = blocks[layer]
            read_z, write_z = split_heads(info.n_heads)

            def inside_attention(head_axis: int, pos_axis: int, heads_first: bool, layer: int = layer) -> HookSite:
                if heads_first:
                    read, write = heads_first_read, heads_first_write
                    return HookSite(None, "attention", layer, read, write, head_axis, pos_axis, 4)
                return HookSite(None, "attention", layer, head_axis=head_axis, pos_axis=pos_axis, ndim=4)

            sites[prefix + "resid_pre"] = HookSite(block, "input", layer)
            sites[prefix + "ln1.scale"] = scale_site(self.ln1(layer), self.norm_kind, layer)
            for name in ("attn.q", "attn.k", "attn.v"):
                sites[prefix + name] = inside_attention(2, 1, True)
            sites[prefix + "attn.scores"] = inside_attention(1, 2, False)
            sites[prefix + "attn.pattern"] = inside_attention(1, 2, False)
            sites[prefix + "attn.z"] = HookSite(
                self.attention_output_projection(layer), "input", layer, read_z, write_z, head_axis=2, ndim=4
            )
            sites[prefix + "attn.out"] = HookSite(self.attention_out_module(layer), "output", layer)
            mid = self.resid_mid_module(layer)
            if mid is not None:
                sites[prefix + "resid_mid"] = HookSite(mid, "output", layer)
            else:
                read, write = derived_resid_mid(layer)
                sites[prefix + "resid_mid"] = HookSite(
                    self.attention_out_module(layer), "output", layer, read, write, requires=(prefix + "resid_pre",)
                )
            sites[prefix + "ln2.scale"] = scale_site(self.ln2(layer), self.norm_kind, layer)
            sites[prefix + "mlp.pre"] = HookSite(self.mlp_input_projection(layer), "output", layer)
            up = self.mlp_up_projection(layer)
            if up is not None:
                sites[prefix + "mlp.up"] = HookSite(up, "output", layer)
            sites[prefix + "mlp.post"] = HookSite(self.mlp_output_projection(layer), "input", layer)
            sites[prefix + "mlp.out"] = HookSite(self.mlp_module(layer), "output", layer)
            sites[prefix + "resid_post"] = HookSite(block, "output", layer)
        final = self.final_module()
        if final is not None:
            sites["final.scale"] = scale_site(final, self.norm_kind, None)
            sites["final"] = HookSite(final, "output")
        else:
            sites["final"] = sites[f"blocks.{info.n_layers - 1}.resid_post"]
        unembed = self.unembed_module()
        if unembed is not None:
            sites["logits"] = HookSite(unembed, "output")
        expected = set(info.hook_points())
        if set(sites) != expected:
            raise HookError(
                f"adapter {type(self).__name__} builds hook points {sorted(set(sites) ^ expected)} that its "
                "ModelInfo flags do not describe (or the reverse)"
            )
        return sites

    # --- linear maps analyses need ------------------------------------------------------
    def head_output_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """W_O per head [n_heads, d_head, d_model] and the output bias [d_model] (or None):
        attn.out = sum_h z_h @ W_O[h] + bias, where `heads_sum_to_attn_out` holds."""
        projection = self.attention_output_projection(layer)
        weight = projection.weight
        if type(projection).__name__ == "Conv1D":  # GPT-2 stores [in, out]
            matrix = weight
        else:  # nn.Linear stores [out, in]
            matrix = weight.t()
        n_heads, d_head = self.info.n_heads, self.info.d_head
        return matrix.reshape(n_heads, d_head, matrix.shape[-1]), getattr(projection, "bias", None)

    def frozen_final_norm(self, x: torch.Tensor, scale: torch.Tensor, bias: bool = False) -> torch.Tensor:
        """The final norm with its scale fixed: linear in x (plus its bias when asked)."""
        final = self.final_module()
        if final is None:
            return x
        return apply_norm(self.norm_kind, final, x, scale, bias=bias)

    def final_norm_bias(self) -> torch.Tensor | None:
        final = self.final_module()
        return None if final is None else getattr(final, "bias", None)

    def unembed_matrix(self) -> torch.Tensor:
        """W_U as [vocab, d_model] (the lm_head weight)."""
        unembed = self.unembed_module()
        if unembed is None:
            raise HookError(f"{self.info.name} is an encoder without an unembedding")
        return unembed.weight

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm + unembedding of a residual-stream tensor (logit lens)."""
        final, unembed = self.final_module(), self.unembed_module()
        if unembed is None:
            raise HookError(f"{self.info.name} is an encoder without an unembedding; the logit lens needs a causal LM")
        return unembed(final(resid) if final is not None else resid)
