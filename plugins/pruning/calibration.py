"""Wanda's statistic and the two unstructured importance scores (Sun et al. 2023, issue 15).

Wanda scores weight W[o, i] by |W[o, i]| * ||X_i||, where ||X_i|| is the L2 norm of input feature i
of that linear map over every calibration token. A weight that is small but reads a feature with
large activations (the outlier features of LLMs) is kept; magnitude pruning would drop it.

How the norms are measured: a forward pre-hook on each linear module sees exactly what the module
reads, for every map (q, k, v, gate, up, ...), including those without a hook point of their own.
The hooks are raw torch hooks, which analyzers otherwise never attach: there is no hook point for
the input of q/k/v or gate/up. They are installed and removed inside one `try/finally` (also on
errors), and they record only passes of the calling thread, so a model shared with other threads
(the server) is unaffected. Padding positions are excluded with the batch's attention mask, and
sums of squares accumulate in float64, so the norms do not depend on batch size or padding.

Scores keep the PARAMETER's layout (`nn.Linear` [out, in], GPT-2 `Conv1D` [in, out]), keyed by
parameter name, so a keep-mask built from them indexes the parameter directly.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence

import torch

from interpsuite.errors import ConfigError, HookError

from .weights import LinearModule, linear_modules


def input_feature_norms(
    model,
    texts: Sequence[str],
    batch_size: int = 8,
    max_length: int | None = 128,
    modules: Sequence[str] | None = None,
    *,
    layers: Sequence[int] | None = None,
    progress: Callable[[Iterable, str, int], Iterable] | None = None,
) -> dict[str, torch.Tensor]:
    """{parameter name: ||X_i|| over all real calibration tokens, tensor[in_features]} (float64, CPU).

    `modules`: kinds ("mlp.down", "attn.q", ...) or parameter names; None: every linear map of the
    chosen `layers` (None: all).
    """
    if isinstance(texts, str):
        texts = [texts]
    if not texts:
        raise ConfigError("input_feature_norms: no calibration texts; Wanda scores need calibration text (give texts)")
    if batch_size < 1:
        raise ConfigError(f"input_feature_norms: batch_size must be >= 1, got {batch_size}")
    targets = linear_modules(model, layers, modules)
    sums = {m.param: None for m in targets}
    owner = threading.get_ident()
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def recorder(entry: LinearModule):
        def hook(module, args, kwargs):
            mask = state["mask"]
            if mask is None or threading.get_ident() != owner:
                return None
            x = args[0] if args else next(iter(kwargs.values()))
            rows = _real_rows(x, mask, entry.param)
            squares = rows.to(torch.float64).pow(2).sum(dim=0)
            previous = sums[entry.param]
            sums[entry.param] = squares if previous is None else previous + squares
            return None

        return hook

    handles = []
    try:
        for entry in targets:
            handles.append(entry.module.register_forward_pre_hook(recorder(entry), with_kwargs=True))
        n_batches = (len(texts) + batch_size - 1) // batch_size
        batches = model.batches(list(texts), batch_size, max_length)
        for batch in progress(batches, "calibration", n_batches) if progress else batches:
            state["mask"] = batch.attention_mask.bool()
            with torch.no_grad():
                model.forward(batch, logits_to_keep=1)
    finally:
        state["mask"] = None
        for handle in handles:
            handle.remove()
    norms = {}
    for entry in targets:
        total = sums[entry.param]
        if total is None:
            raise HookError(f"input_feature_norms: {entry.param} never ran during calibration; is it used by forward?")
        norms[entry.param] = total.sqrt().cpu()
    return norms


def _real_rows(x: torch.Tensor, mask: torch.Tensor, param: str) -> torch.Tensor:
    """The input rows of real tokens, [n_real, in_features], whether x is [b, pos, in] or flattened."""
    if tuple(x.shape[:-1]) == tuple(mask.shape):
        return x[mask.to(x.device)]
    if x.dim() == 2 and x.shape[0] == mask.numel():
        return x[mask.flatten().to(x.device)]
    raise HookError(
        f"input_feature_norms: the input of {param} has shape {tuple(x.shape)}, which does not match the "
        f"batch's [batch, pos] = {tuple(mask.shape)}; padding cannot be excluded"
    )


def magnitude_scores(model, modules: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """{parameter name: |W|} in the parameter's own layout (float32)."""
    return {m.param: m.parameter.detach().abs().to(torch.float32) for m in linear_modules(model, kinds=modules)}


def wanda_scores(model, norms: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """{parameter name: |W| * ||X_in||} for every parameter in `norms`, in the parameter's layout.

    The norm of input feature i multiplies every weight that reads feature i: column i of an
    `nn.Linear` weight [out, in], row i of a GPT-2 `Conv1D` weight [in, out].
    """
    if not norms:
        raise ConfigError(
            "wanda_scores: no input-feature norms; Wanda needs calibration data: run input_feature_norms(model, texts)"
        )
    by_param = {m.param: m for m in linear_modules(model)}
    unknown = sorted(set(norms) - set(by_param))
    if unknown:
        raise ConfigError(f"wanda_scores: norms for {unknown[:3]} name no linear map of {model.info.name}")
    scores = {}
    for param, norm in norms.items():
        entry = by_param[param]
        if norm.shape != (entry.in_features,):
            raise ConfigError(
                f"wanda_scores: the norm of {param} has shape {tuple(norm.shape)}; its layer reads "
                f"{entry.in_features} input features"
            )
        weight = entry.parameter.detach().abs().to(torch.float32)
        feature = norm.to(device=weight.device, dtype=torch.float32)
        scores[param] = weight * (feature[:, None] if entry.transposed else feature[None, :])
    return scores
