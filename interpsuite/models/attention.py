"""The attention function interpsuite installs in every adapted model.

Transformers computes the attention pattern inside a function, not a module, so there is
nothing to hook. We register our own implementation with transformers' AttentionInterface:
when nobody watches the pattern it defers to PyTorch's fused SDPA (no overhead); when a hook
sits on the pattern's HookPoint it computes attention explicitly, per query head (GQA keys
and values expanded), and routes the post-softmax pattern through that HookPoint, so the
pattern can be captured and also intervened on.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

IMPLEMENTATION_NAME = "interpsuite"
PATTERN_ATTRIBUTE = "interpsuite_pattern"


def _explicit_mask(scores: torch.Tensor, attention_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """Apply the (boolean, additive or implicit causal) mask to raw attention scores."""
    minimum = torch.finfo(scores.dtype).min
    if attention_mask is None:
        if not is_causal or scores.shape[-2] == 1:
            return scores
        q_len, k_len = scores.shape[-2:]
        offset = k_len - q_len
        allowed = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).tril(offset)
        return scores.masked_fill(~allowed, minimum)
    if attention_mask.dtype == torch.bool:
        return scores.masked_fill(~attention_mask[..., : scores.shape[-1]], minimum)
    return scores + attention_mask[..., : scores.shape[-1]].to(scores.dtype)


def interpsuite_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
):
    pattern_hook = getattr(module, PATTERN_ATTRIBUTE, None)
    if pattern_hook is None or not pattern_hook.active:
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    n_rep = getattr(module, "num_key_value_groups", 1)
    key = repeat_kv(key, n_rep)
    value = repeat_kv(value, n_rep)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    scores = _explicit_mask(scores, attention_mask, causal)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    pattern = pattern_hook(pattern)
    pattern = torch.nn.functional.dropout(pattern, p=dropout, training=module.training)
    output = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return output, pattern


def register_attention() -> str:
    """Register the implementation (idempotent) and return its name."""
    AttentionInterface.register(IMPLEMENTATION_NAME, interpsuite_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION_NAME, sdpa_mask)
    return IMPLEMENTATION_NAME
