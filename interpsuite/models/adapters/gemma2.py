"""Gemma-2: the Llama block plus sandwich norms, soft-capping and alternating sliding windows.

What differs from Llama, and how the vocabulary maps onto it:

- Norms are RMSNorm with `(1 + weight)` (`norm_kind = "rms_offset"`), computed in float32.
- Each sublayer is normalised on the way in *and* on the way out:
  `resid_mid = resid_pre + post_attention_layernorm(attn(input_layernorm(resid_pre)))` and
  `resid_post = resid_mid + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(resid_mid)))`.
  `attn.out` and `mlp.out` are the outputs of the *post* norms, the values added to the
  residual, so the residual stream stays additive (`resid_post = resid_pre + attn.out +
  mlp.out`). `ln1` is `input_layernorm`, `ln2` is `pre_feedforward_layernorm`; the post norms
  have no `.scale` hook point. Because `attn.out` is a normalised sum of the heads' outputs,
  per-head contributions (`z_h @ W_O[h]`) do not add up to it: `heads_sum_to_attn_out` is
  False, and per-head direct attribution is approximate on Gemma-2.
- Attention logits are soft-capped, `scores = cap * tanh(q.k * scaling / cap)`, before the
  mask; `attn.scores` is after the cap (what the softmax sees). `scaling` is
  `query_pre_attn_scalar ** -0.5`, not `d_head ** -0.5`.
- Layers alternate sliding-window and global attention (`config.layer_types`); transformers
  builds one mask per layer type, so `attn.scores` shows keys outside a sliding layer's window
  at -inf and `attn.pattern` gives them 0.
- Final logits are soft-capped too (`ModelInfo.logit_softcap`): the `logits` hook point and
  `unembed()` (logit lens) are after the cap, like the model's output, so logits are not
  linear in `final`. Writing `logits` writes through the cap's inverse; values must lie
  strictly inside (-cap, cap).
- The embedding is multiplied by sqrt(d_model) inside the model; `embed` (block 0's input) is
  after that scaling.
- transformers has no SDPA path for Gemma-2 (SDPA cannot soft-cap): load it with
  `attn_implementation="eager"`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ...hooks import HookSite, SiteCall
from .llama import LlamaAdapter


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """`cap * tanh(logits / cap)`, in the order transformers computes it (bitwise equal)."""
    return torch.tanh(logits / cap) * cap


def softcap_inverse(capped: torch.Tensor, cap: float) -> torch.Tensor:
    """The pre-cap logits whose soft-capped value is `capped` (clamped inside (-cap, cap))."""
    limit = 1.0 - torch.finfo(capped.dtype).eps
    return torch.atanh((capped / cap).clamp(-limit, limit)) * cap


class Gemma2Adapter(LlamaAdapter):
    architecture = "gemma2"
    model_types = ("gemma2",)
    norm_kind = "rms_offset"
    gated_mlp = True
    heads_sum_to_attn_out = False
    attn_implementation = "eager"  # SDPA cannot soft-cap attention logits

    @classmethod
    def capabilities(cls, config) -> dict[str, Any]:
        cap = getattr(config, "final_logit_softcapping", None)
        return {**super().capabilities(config), "logit_softcap": float(cap) if cap else None}

    module_paths = dataclasses.replace(
        LlamaAdapter.module_paths,
        attn_out="post_attention_layernorm",
        mlp="post_feedforward_layernorm",
        ln2="pre_feedforward_layernorm",
    )

    def build_sites(self) -> dict[str, HookSite]:
        sites = super().build_sites()
        cap = self.info.logit_softcap
        if cap is not None:
            # lm_head's output is before the cap; the hook point is what the model returns

            def read(call: SiteCall) -> torch.Tensor:
                return softcap(call.value, cap)

            def write(call: SiteCall, capped: torch.Tensor) -> torch.Tensor:
                return softcap_inverse(capped, cap)

            sites["logits"] = HookSite(self.unembed_module(), "output", None, read, write)
        return sites

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        logits = super().unembed(resid)
        cap = self.info.logit_softcap
        return logits if cap is None else softcap(logits, cap)
