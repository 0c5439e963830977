"""The attention function a wrapped model runs, and the hook points that live inside it.

transformers computes queries, keys, values, scores and the pattern inside an attention
*function*, not in modules, so no module hook can see them. A wrapped model's config names
one of our registered implementations (`interpsuite_sdpa`, `interpsuite_eager`, ...), which
wraps the implementation the model had:

- when no pass of the model's owner runs in this thread, or the pass watches nothing inside
  this layer's attention, it calls the original implementation unchanged (no overhead, and
  the caller's own forwards behave exactly as before);
- when a pass captures or changes `attn.q`/`k`/`v`, those run through the pass, and the
  original implementation runs on the result;
- when a pass watches `attn.scores` or `attn.pattern`, the layer computes attention
  explicitly (per query head, GQA keys and values expanded, soft-capping where the model
  has it), so both can be captured and changed. It agrees with Hugging Face's eager
  attention (tested to 1e-6 in fp32).

Masks are created by the original implementation's mask function, so masks keep the format
that implementation expects (sdpa: boolean or None; eager: additive floats).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask, sdpa_mask

from ..hooks import CURRENT_PASS, HookSite, SiteCall

PREFIX = "interpsuite_"
#: implementations we can stand in for (others, e.g. flash attention, are refused at wrap time)
SUPPORTED = ("sdpa", "eager")


@functools.cache
def _eager_of_class(module_class: type) -> Callable:
    """The model's own eager attention function (it knows the model's quirks); looked up once
    per attention class, since every forward of a wrapped model passes through here."""
    function = getattr(sys.modules.get(module_class.__module__), "eager_attention_forward", None)
    if function is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    return function


def _original(name: str, module: torch.nn.Module) -> Callable:
    if name == "eager":
        return _eager_of_class(type(module))
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[name]


def _allowed(
    attention_mask: torch.Tensor | None, q_len: int, k_len: int, is_causal: bool, device: torch.device
) -> torch.Tensor | None:
    """Boolean [.., q, k] of the key positions each query may attend to (None: all)."""
    if attention_mask is None:
        if not is_causal or q_len == 1:
            return None
        return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(k_len - q_len)
    mask = attention_mask[..., :k_len]
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def explicit_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float | None,
    dropout: float,
    softcap: float | None,
    is_causal: bool,
    watch: Callable[[str, torch.Tensor], torch.Tensor],
    uniform_empty_rows: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, with `scores` and `pattern` passed through `watch`.

    A query row with no allowed key (left padding; a right-padded query whose sliding window
    holds only padding) gets what the implementation it stands in for gives it, so watching a
    layer changes nothing anywhere: eager's uniform pattern, or (`uniform_empty_rows=False`)
    SDPA's zeros (PyTorch >= 2.5 returns 0 for a fully masked row)."""
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    allowed = _allowed(attention_mask, scores.shape[-2], scores.shape[-1], is_causal, scores.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    scores = watch("attn.scores", scores)
    finite = scores.clamp(min=torch.finfo(scores.dtype).min)
    pattern = torch.softmax(finite, dim=-1, dtype=torch.float32).to(query.dtype)
    if not uniform_empty_rows:
        pattern = pattern.masked_fill(torch.isneginf(scores).all(dim=-1, keepdim=True), 0.0)
    pattern = watch("attn.pattern", pattern)
    pattern = torch.nn.functional.dropout(pattern, p=dropout, training=module.training)
    output = torch.matmul(pattern, value).transpose(1, 2).contiguous()
    return output, pattern


def _attention_sites(state, layers: dict[int, int], module) -> tuple[int, dict[str, HookSite]] | None:
    layer = layers.get(id(module))
    if layer is None or layer not in state.attention_layers or layer < state.start_layer:
        return None
    return layer, state.owner.sites


def make_attention(original_name: str) -> Callable:
    """The attention function standing in for `original_name`."""

    def interpsuite_attention(module, query, key, value, attention_mask, **kwargs):
        state = CURRENT_PASS.get()
        located = None
        if state is not None:
            layers = getattr(state.owner, "attention_layer_of", None)
            if layers is not None:
                located = _attention_sites(state, layers, module)
        original = _original(original_name, module)
        if located is None:
            return original(module, query, key, value, attention_mask, **kwargs)
        layer, sites = located
        prefix = f"blocks.{layer}."
        q_len = query.shape[2]

        def watch(site: str, tensor: torch.Tensor) -> torch.Tensor:
            name = prefix + site
            if name not in state.active:
                return tensor
            new = state.process(name, sites[name], SiteCall(tensor, (), {}, state))
            return tensor if new is None else new

        def watch_new_positions(site: str, tensor: torch.Tensor) -> torch.Tensor:
            # keys/values may hold a cached prefix: only this pass's positions are the hook point
            if tensor.shape[2] == q_len or prefix + site not in state.active:
                return watch(site, tensor)
            cached, new = tensor[:, :, : tensor.shape[2] - q_len], tensor[:, :, tensor.shape[2] - q_len :]
            return torch.cat([cached, watch(site, new)], dim=2)

        query = watch("attn.q", query)
        key = watch_new_positions("attn.k", key)
        value = watch_new_positions("attn.v", value)
        if prefix + "attn.scores" not in state.active and prefix + "attn.pattern" not in state.active:
            return original(module, query, key, value, attention_mask, **kwargs)
        is_causal = kwargs.get("is_causal")
        if is_causal is None:
            is_causal = getattr(module, "is_causal", True)
        return explicit_attention(
            module,
            query,
            key,
            value,
            attention_mask,
            scaling=kwargs.get("scaling"),
            dropout=kwargs.get("dropout", 0.0),
            softcap=kwargs.get("softcap"),
            is_causal=bool(is_causal),
            watch=watch,
            uniform_empty_rows=original_name == "eager",
        )

    return interpsuite_attention


def register_attention(original_name: str) -> str:
    """Register (idempotently) our stand-in for `original_name`; returns its name."""
    name = PREFIX + original_name
    AttentionInterface.register(name, make_attention(original_name))
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, eager_mask if original_name == "eager" else sdpa_mask)
    return name


# --- canonical views of the tensors inside attention ----------------------------------
def heads_first_read(call: SiteCall) -> torch.Tensor:
    """[b, head, pos, d] -> [b, pos, head, d] (only this pass's positions for cached keys)."""
    return call.value.transpose(1, 2)


def heads_first_write(call: SiteCall, canonical: torch.Tensor) -> torch.Tensor:
    return canonical.transpose(1, 2)
