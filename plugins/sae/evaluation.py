"""How good an SAE is on held-out text: reconstruction, sparsity, and what splicing it in costs.

`evaluate_sae(model, sae, texts)` streams the texts once and reports what SAELens and the SAE
papers report:

- reconstruction: MSE (squared error summed over d_in, averaged over tokens, as SAELens) and
  explained variance, 1 - SSE / total sum of squares about the per-dimension mean over all
  tokens (streamed exactly: sums and sums of squares in float64, not a per-batch average);
- sparsity: L0 (active latents per token), dead latents (never active on these tokens) and
  dense latents (active on more than `dense_threshold` of them), and every latent's density;
- downstream, for causal LMs: the next-token cross-entropy with the activation replaced by the
  SAE's reconstruction (no error term), between the clean pass and zero-ablating the hook point;
  "CE loss recovered" = (CE_zero - CE_spliced) / (CE_zero - CE_clean): 1 when splicing costs
  nothing, 0 when it is as bad as deleting the activation.

Every real (non-padding) token counts, the first one included; the CE is over next-token
predictions of real tokens. The three passes per batch are one clean pass that also captures
the activation, and two intervention passes (`map` to the reconstruction, `zero`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention

if TYPE_CHECKING:
    from interpsuite.models import HookedModel, TokenBatch


@dataclass
class SAEEvaluation:
    """The metrics of one SAE on one set of texts (None where a metric does not apply)."""

    hook: str
    n_tokens: int
    width: int
    mse: float
    explained_variance: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    ce_clean: float | None = None
    ce_spliced: float | None = None
    ce_zero_ablation: float | None = None
    ce_loss_recovered: float | None = None
    #: fraction of tokens on which each latent is active, [width]
    density: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def metrics(self) -> dict[str, float | None]:
        names = ("mse", "explained_variance", "l0", "dead_fraction", "dense_fraction")
        values: dict[str, float | None] = {name: float(getattr(self, name)) for name in names}
        for name in ("ce_clean", "ce_spliced", "ce_zero_ablation", "ce_loss_recovered"):
            values[name] = getattr(self, name)
        values["n_tokens"] = float(self.n_tokens)
        return values

    def sanity(self) -> dict[str, tuple[float, float, str]]:
        """Bounds every evaluation must meet, as (value, threshold, mode) for `Result.add_check`."""
        checks = {
            "explained_variance_at_most_1": (self.explained_variance, 1.0 + 1e-9, "max"),
            "l0_at_most_width": (self.l0, float(self.width), "max"),
            "mse_non_negative": (self.mse, 0.0, "min"),
            "dead_fraction_at_most_1": (self.dead_fraction, 1.0, "max"),
        }
        if self.ce_clean is not None and self.ce_spliced is not None:
            checks["ce_non_negative"] = (min(self.ce_clean, self.ce_spliced), 0.0, "min")
        return checks


@dataclass
class _Sums:
    """Streamed sums over real tokens (float64)."""

    width: int
    d_in: int
    n: int = 0
    sse: float = 0.0
    active: int = 0
    ce: dict[str, float] = field(default_factory=lambda: {"clean": 0.0, "spliced": 0.0, "zero": 0.0})
    ce_count: int = 0

    def __post_init__(self) -> None:
        self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        self.sum_x2 = torch.zeros(self.d_in, dtype=torch.float64)
        self.fires = torch.zeros(self.width, dtype=torch.float64)

    def add(self, x: torch.Tensor, acts: torch.Tensor, x_hat: torch.Tensor) -> None:
        x64 = x.double().cpu()
        self.n += x.shape[0]
        self.sse += float((x64 - x_hat.double().cpu()).pow(2).sum())
        self.sum_x += x64.sum(0)
        self.sum_x2 += x64.pow(2).sum(0)
        on = (acts > 0).cpu()
        self.active += int(on.sum())
        self.fires += on.double().sum(0)

    def total_variance(self) -> float:
        return float((self.sum_x2 - self.sum_x.pow(2) / max(self.n, 1)).sum())


def _sae_hook(sae: Any, hook: str | None) -> str:
    chosen = hook or getattr(getattr(sae, "cfg", None), "hook", "") or ""
    if not chosen:
        raise ConfigError("sae evaluation: the SAE's cfg.hook is not set; give hook='blocks.L.site'")
    return chosen


def _next_token_ce(logits: torch.Tensor, batch: TokenBatch) -> tuple[float, int]:
    """Summed next-token cross-entropy over real tokens, and how many predictions it covers."""
    targets = batch.input_ids[:, 1:].to(logits.device)
    mask = (batch.attention_mask[:, 1:] * batch.attention_mask[:, :-1]).to(logits.device).bool()
    losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none"
    ).view_as(targets)
    return float(losses[mask].double().sum()), int(mask.sum())


def evaluate_sae(
    model: HookedModel,
    sae: Any,
    texts: Sequence[str],
    hook: str | None = None,
    *,
    batch_size: int = 8,
    max_length: int | None = 128,
    dense_threshold: float = 0.1,
    downstream: bool = True,
    progress: Callable[..., Iterable] | None = None,
) -> SAEEvaluation:
    """Evaluate `sae` at `hook` (default: the SAE's own) over `texts`; see the module docstring.
    `progress(iterable, desc, total)` wraps the batches (a RunContext's `progress`: a bar)."""
    hook = _sae_hook(sae, hook)
    if hook not in model.info.hook_points():
        from interpsuite.hooks import unknown_hook_message

        raise ConfigError(f"sae evaluation: {unknown_hook_message(hook, model.adapter.sites)}")
    if not texts:
        raise ConfigError("sae evaluation: no texts; give held-out texts the SAE was not trained on")
    if not 0.0 < dense_threshold <= 1.0:
        raise ConfigError(f"sae evaluation: dense_threshold must be in (0, 1], got {dense_threshold}")
    cfg = getattr(sae, "cfg", None)
    width, d_in = int(cfg.width), int(cfg.d_in)
    sums = _Sums(width, d_in)
    causal = downstream and model.info.is_causal

    def reconstruct(x: torch.Tensor) -> torch.Tensor:
        return sae.decode(sae.encode(x)).to(x.dtype)

    with torch.no_grad():
        batches = model.batches(list(texts), batch_size, max_length)
        n_batches = (len(texts) + batch_size - 1) // batch_size
        for batch in progress(batches, "sae_eval", n_batches) if progress else batches:
            clean = model.forward(batch, capture=[hook])
            x = clean.cache[hook]
            if x.shape[-1] != d_in:
                raise ConfigError(
                    f"sae evaluation: the SAE's d_in is {d_in} but {hook} has {x.shape[-1]} entries per position"
                )
            real = batch.attention_mask.bool().to(x.device)
            tokens = x[real]
            acts = sae.encode(tokens)
            sums.add(tokens, acts, sae.decode(acts))
            if causal:
                ce, count = _next_token_ce(clean.output, batch)
                sums.ce["clean"] += ce
                spliced = model.forward(batch, interventions=[Intervention(hook, "map", fn=reconstruct)]).output
                sums.ce["spliced"] += _next_token_ce(spliced, batch)[0]
                zeroed = model.forward(batch, interventions=[Intervention(hook, "zero")]).output
                sums.ce["zero"] += _next_token_ce(zeroed, batch)[0]
                sums.ce_count += count
    if sums.n == 0:
        raise ConfigError("sae evaluation: the texts hold no tokens")
    density = (sums.fires / sums.n).numpy()
    result = SAEEvaluation(
        hook=hook,
        n_tokens=sums.n,
        width=width,
        mse=sums.sse / sums.n,
        explained_variance=1.0 - sums.sse / max(sums.total_variance(), 1e-30),
        l0=sums.active / sums.n,
        dead_fraction=float((density == 0).mean()),
        dense_fraction=float((density > dense_threshold).mean()),
        density=density,
    )
    if causal and sums.ce_count:
        clean_ce, spliced_ce, zero_ce = (sums.ce[k] / sums.ce_count for k in ("clean", "spliced", "zero"))
        result.ce_clean, result.ce_spliced, result.ce_zero_ablation = clean_ce, spliced_ce, zero_ce
        gap = zero_ce - clean_ce
        result.ce_loss_recovered = (zero_ce - spliced_ce) / gap if abs(gap) > 1e-12 else None
    return result
