"""Norm scales as hook points: the normaliser each LayerNorm / RMSNorm divides by.

A norm is linear in its input once its scale is fixed. Capturing `blocks.L.ln1.scale`
(and `final.scale`) and writing it back unchanged ("freezing" it) is what makes direct
logit attribution and attribution patching through a norm exact. The scale is read from
the norm's input; when a pass changes it, the norm's output is recomputed from the input
with the new scale, by the same formula the host module uses.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..hooks import HookSite, SiteCall

NormKind = Literal["rms", "rms_offset", "layer"]


def norm_epsilon(module: nn.Module) -> float:
    for attribute in ("variance_epsilon", "eps", "epsilon"):
        value = getattr(module, attribute, None)
        if isinstance(value, float):
            return value
    raise TypeError(f"cannot find the epsilon of norm module {type(module).__name__}")


def norm_scale(kind: NormKind, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[..., 1]: sqrt(mean square + eps) (RMS) or sqrt(variance + eps) (LayerNorm), in float32."""
    eps = norm_epsilon(module)
    x = x.float()
    if kind == "layer":
        variance = x.var(dim=-1, keepdim=True, unbiased=False)
    else:
        variance = x.pow(2).mean(dim=-1, keepdim=True)
    return torch.sqrt(variance + eps)


def apply_norm(kind: NormKind, module: nn.Module, x: torch.Tensor, scale: torch.Tensor, bias: bool = True):
    """The norm's output for input x with the given scale. With `bias=False`, the linear part
    only: a frozen norm maps a sum of components to the sum of their images plus the bias,
    which is how direct logit attribution splits the final logit."""
    dtype = x.dtype
    normed = x.float()
    if kind == "layer":
        normed = normed - normed.mean(dim=-1, keepdim=True)
    normed = normed / scale.float()
    weight = getattr(module, "weight", None)
    if kind == "rms_offset":  # Gemma: normed * (1 + weight), in float32
        return (normed * (1.0 + weight.float())).to(dtype)
    out = normed.to(dtype)  # Llama-style RMSNorm and LayerNorm: weight * normed (input dtype)
    if weight is not None:
        out = weight * out
    offset = getattr(module, "bias", None)
    if bias and offset is not None:
        out = out + offset
    return out


def scale_site(module: nn.Module, kind: NormKind, layer: int | None) -> HookSite:
    """The `.scale` hook point of one norm module ([b, pos, 1])."""

    def read(call: SiteCall) -> torch.Tensor:
        x = call.args[0] if call.args else call.kwargs["hidden_states"]
        return norm_scale(kind, module, x).to(x.dtype)

    def write(call: SiteCall, scale: torch.Tensor) -> torch.Tensor:
        x = call.args[0] if call.args else call.kwargs["hidden_states"]
        return apply_norm(kind, module, x, scale)

    return HookSite(module, "output", layer, read, write, head_axis=None, pos_axis=1, ndim=3, needs_inputs=True)
