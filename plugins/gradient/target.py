"""The scalar target every gradient analyzer differentiates (one value per row).

Causal LMs, at each row's last real token:
- `target=None` (default): the logit of the model's top prediction for that row (chosen on the
  clean forward and then held fixed, so ablations and gradients refer to the same token);
- `target=" Mary"`: that token's logit (it must be one tokenizer piece; a multi-piece string is
  refused with a ConfigError naming the pieces);
- `target=" Mary", contrast=" John"`: the logit difference target - contrast.

Encoders have no LM head: the target is the L2 norm of the mean-pooled final hidden state over
the row's real tokens (`target`/`contrast` are refused for encoders).

Rows are independent (each row only attends to itself), so the gradient of the *sum* of the row
targets with respect to a row's activations is that row's own gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interpsuite.errors import ConfigError


@dataclass
class Target:
    kind: str  # "top" | "logit" | "logit_diff" | "pooled_norm"
    target_id: int | None = None
    contrast_id: int | None = None
    text: str = ""

    @property
    def label(self) -> str:
        return {"top": "logit of the top prediction", "pooled_norm": "norm of the mean-pooled final hidden state"}.get(
            self.kind, self.text
        )


def check_target_options(info, target: str | None, contrast: str | None, what: str) -> None:
    """Weight-free validation of target/contrast options."""
    if not info.is_causal and (target is not None or contrast is not None):
        raise ConfigError(
            f"{what}: target/contrast name tokens, but {info.name} is an encoder without an LM head; leave them null "
            "(the target is then the norm of the mean-pooled final hidden state)"
        )
    if contrast is not None and target is None:
        raise ConfigError(f"{what}: contrast={contrast!r} needs a target token; set target too (e.g. ' Mary')")


def resolve_target(model, target: str | None, contrast: str | None) -> Target:
    if not model.info.is_causal:
        return Target("pooled_norm")
    if target is None:
        return Target("top")
    target_id = model.token_id(target, "target")[0]
    if contrast is None:
        return Target("logit", target_id, text=f"logit of {target!r}")
    contrast_id = model.token_id(contrast, "contrast")[0]
    return Target("logit_diff", target_id, contrast_id, text=f"logit({target!r}) - logit({contrast!r})")


def row_ids(spec: Target, output: torch.Tensor, last_index: torch.Tensor) -> torch.Tensor | None:
    """Per-row target token ids (the top prediction for kind "top"), or None for encoders."""
    if spec.kind == "pooled_norm":
        return None
    if spec.kind == "top":
        rows = torch.arange(output.shape[0], device=output.device)
        return output[rows, last_index].detach().argmax(-1)
    return torch.full((output.shape[0],), spec.target_id, device=output.device, dtype=torch.long)


def target_values(
    spec: Target,
    output: torch.Tensor,
    mask: torch.Tensor,
    last_pos: torch.Tensor,
    ids: torch.Tensor | None,
) -> torch.Tensor:
    """One scalar per row. `output`: logits [B, T', V] with `last_pos` indexing T', or hidden [B, T, D]."""
    if spec.kind == "pooled_norm":
        m = mask.to(output.dtype).unsqueeze(-1)
        pooled = (output * m).sum(1) / m.sum(1).clamp_min(1.0)
        return pooled.norm(dim=-1)
    rows = torch.arange(output.shape[0], device=output.device)
    last = output[rows, last_pos]
    value = last.gather(1, ids.unsqueeze(1)).squeeze(1)
    if spec.kind == "logit_diff":
        value = value - last[:, spec.contrast_id]
    return value


def last_positions(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(`logits_to_keep` positions, each row's index into them): only the rows' last real tokens."""
    return batch.last_positions()


def forward_target(model, spec: Target, batch, capture, ids: torch.Tensor | None = None):
    """Forward with gradients through captured activations: (values [B], ids, cache)."""
    keep, pos = last_positions(batch)
    result = model.forward(batch, capture=capture, grad=True, logits_to_keep=keep)
    if ids is None:
        ids = row_ids(spec, result.output, pos)
    values = target_values(spec, result.output, batch.attention_mask, pos, ids)
    return values, ids, result.cache


def gradients(values: torch.Tensor, tensors: list[torch.Tensor], names: list[str]) -> list[torch.Tensor]:
    """d(sum of row targets)/d(each tensor); zeros for a tensor the target does not depend on."""
    for name, tensor in zip(names, tensors, strict=True):
        if not tensor.requires_grad:
            raise RuntimeError(f"captured {name} is not part of the autograd graph (model parameters frozen?)")
    grads = torch.autograd.grad(values.sum(), tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, tensors, strict=True)]


def sweep_metric(spec: Target, ids: torch.Tensor | None):
    """A `model.sweep` metric giving the target per row of the repeated batch (ids fixed per base row)."""

    def metric(output: torch.Tensor, repeated) -> torch.Tensor:
        k = repeated.size // (1 if ids is None else ids.shape[0])
        row = None if ids is None else ids.repeat(k)
        if spec.kind == "pooled_norm":
            return target_values(spec, output, repeated.attention_mask, repeated.last_index, None)
        _, pos = last_positions(repeated)
        return target_values(spec, output, repeated.attention_mask, pos, row)

    return metric
