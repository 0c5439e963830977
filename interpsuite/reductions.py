"""Reductions every analyzer writes: statistics over real tokens, accumulated across batches.

The model right-pads each batch (`batch.attention_mask` is 1 on real tokens, 0 on padding),
so a plain `.mean()` over positions silently counts padding, and a mean of per-batch means
weights batches instead of tokens. These helpers take the mask every time, accumulate in
float64 on the CPU (sums over many tokens lose digits in float32, and MPS has no float64),
and give exactly what one reduction over all real tokens of the dataset would give.

    means = TokenMeans()                                   # one TokenMean per key, made on first use
    for batch in ctx.batches(self.name):
        cache = ctx.model.forward(batch, capture=layer_hooks("resid_post", layers)).cache
        for layer, resid in per_layer(cache, "resid_post"):    # (0, [b, pos, d_model]), (1, ...), ...
            means[layer].add(resid.norm(dim=-1), batch.attention_mask)
    {layer: float(m.mean()) for layer, m in means.items()}
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .hooks import parse_hook_name

__all__ = [
    "TokenMean",
    "TokenMeans",
    "layer_hooks",
    "masked_mean",
    "masked_sum",
    "per_layer",
    "real_tokens",
]


def real_tokens(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """values[batch, pos, ...] -> [n_real_tokens, ...]: the rows of real tokens, padding dropped."""
    if values.dim() < 2 or tuple(values.shape[:2]) != tuple(attention_mask.shape):
        raise ValueError(
            f"values of shape {tuple(values.shape)} do not start with the mask's [batch, pos] "
            f"{tuple(attention_mask.shape)}; reductions take values[batch, pos, ...]"
        )
    return values.detach()[attention_mask.to(values.device).bool()]


def _float64(values: torch.Tensor) -> torch.Tensor:
    """On the CPU in float64 (MPS cannot hold float64; the reduced tensors are small anyway)."""
    if values.device.type == "mps":
        values = values.cpu()
    return values.to(torch.float64)


def masked_sum(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Sum over real tokens of values[batch, pos, ...] -> [...], float64 on the CPU."""
    return _float64(real_tokens(values, attention_mask)).sum(dim=0).cpu()


def masked_mean(values: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens of values[batch, pos, ...] -> [...], float64 (one batch; see TokenMean)."""
    acc = TokenMean()
    acc.add(values, attention_mask)
    return acc.mean()


@dataclass
class TokenMean:
    """Mean, sum, count and (optionally) variance over real tokens, across batches.

    `add(values[batch, pos, ...], attention_mask)` per batch; `mean()`, `sum`, `count`,
    `var()` and `std()` reduce over every real token added so far, per trailing element
    (a [b, pos] input gives scalars, [b, pos, d_model] gives [d_model]). The variance
    pools all positions (it does not care which position a token sat at) and is merged
    batch by batch with Chan et al.'s update, so it stays exact where sum-of-squares
    formulas cancel. Everything is float64 on the CPU.
    """

    track_variance: bool = False
    count: int = 0
    _sum: torch.Tensor | None = field(default=None, repr=False)
    _m2: torch.Tensor | None = field(default=None, repr=False)

    def add(self, values: torch.Tensor, attention_mask: torch.Tensor) -> TokenMean:
        tokens = _float64(real_tokens(values, attention_mask))
        n = tokens.shape[0]
        if n == 0:
            return self
        batch_sum = tokens.sum(dim=0)
        if self._sum is not None and self._sum.shape != batch_sum.shape:
            raise ValueError(f"values per token changed shape: {tuple(batch_sum.shape)} after {tuple(self._sum.shape)}")
        if self.track_variance:
            batch_mean = batch_sum / n
            batch_m2 = (tokens - batch_mean).pow(2).sum(dim=0)
            if self._m2 is None:
                self._m2 = batch_m2.cpu()
            else:
                delta = batch_mean.cpu() - self._sum / self.count
                self._m2 = self._m2 + batch_m2.cpu() + delta.pow(2) * (self.count * n / (self.count + n))
        self._sum = batch_sum.cpu() if self._sum is None else self._sum + batch_sum.cpu()
        self.count += n
        return self

    def _need_tokens(self, what: str) -> None:
        if self.count == 0:
            raise ValueError(f"TokenMean.{what}(): no real tokens were added")

    @property
    def sum(self) -> torch.Tensor:
        self._need_tokens("sum")
        return self._sum

    def mean(self) -> torch.Tensor:
        self._need_tokens("mean")
        return self._sum / self.count

    def var(self, correction: int = 0) -> torch.Tensor:
        """Variance over tokens; correction=1 for the unbiased (n - 1) estimate."""
        self._need_tokens("var")
        if not self.track_variance:
            raise ValueError("TokenMean(track_variance=True) is needed for var()/std()")
        if self.count - correction <= 0:
            return torch.full_like(self._m2, float("nan"))
        return self._m2 / (self.count - correction)

    def std(self, correction: int = 0) -> torch.Tensor:
        return self.var(correction).sqrt()


class TokenMeans(dict):
    """A dict of TokenMean made on first use: `means[layer].add(values, mask)`; keys keep insertion order."""

    def __init__(self, track_variance: bool = False):
        super().__init__()
        self.track_variance = track_variance

    def __missing__(self, key: Any) -> TokenMean:
        self[key] = TokenMean(track_variance=self.track_variance)
        return self[key]

    def means(self) -> dict[Any, torch.Tensor]:
        return {key: acc.mean() for key, acc in self.items()}

    def table(self, key: str = "key", value: str = "mean"):
        """A pandas DataFrame with one row per key: `key`, `value` (the mean) and `n_tokens`.

        For scalar means (values added as [batch, pos]), the usual per-layer table; reduce
        vector values to one number per token first (e.g. a norm).
        """
        import pandas as pd

        rows = []
        for name, acc in self.items():
            mean = acc.mean()
            if mean.numel() != 1:
                shape = tuple(mean.shape)
                raise ValueError(f"TokenMeans.table(): the mean for {name!r} has shape {shape}, not a scalar")
            rows.append({key: name, value: float(mean), "n_tokens": acc.count})
        return pd.DataFrame(rows, columns=[key, value, "n_tokens"])


def layer_hooks(site: str, layers: Iterable[int]) -> list[str]:
    """["blocks.0.resid_post", ...]: the capture list for one per-layer site over `layers`."""
    return [f"blocks.{int(layer)}.{site}" for layer in layers]


def per_layer(
    cache: Mapping[str, torch.Tensor], site: str, layers: Iterable[int] | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """(layer, tensor) for `blocks.{layer}.{site}` in a forward's cache, in layer order.

    Without `layers`, every captured layer of that site; a site with no capture at all is a
    KeyError naming what was captured (an empty loop would hide a typo).
    """
    if layers is None:
        found = sorted(
            (layer, name) for name in cache for layer, s in [parse_hook_name(name)] if s == site and layer is not None
        )
        if not found:
            raise KeyError(f"no blocks.{{L}}.{site} in the capture; captured: {sorted(cache)}")
        for layer, name in found:
            yield layer, cache[name]
        return
    for layer in layers:
        name = f"blocks.{int(layer)}.{site}"
        if name not in cache:
            raise KeyError(f"{name} was not captured; captured: {sorted(cache)}")
        yield int(layer), cache[name]
