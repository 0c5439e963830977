"""The logit-difference metric and its normalisation (clean = 1, corrupted = 0).

Patching results are reported as (m - m_corrupted) / (m_clean - m_corrupted) where m is the
logit difference logit(answer) - logit(wrong) at the clean prompt's last token, averaged over
the pairs *before* normalising (the usual convention; per-pair ratios explode when a pair's
clean and corrupted differences are close).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interpsuite.errors import AnalyzerError


def last_positions(batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions to keep for `logits_to_keep`, for each row its column in the kept logits)."""
    return batch.last_positions()


def logit_diff(logits: torch.Tensor, column: torch.Tensor, answer_ids: torch.Tensor, wrong_ids: torch.Tensor):
    """logit(answer) - logit(wrong) per row; `logits` is [B, kept, V], `column` each row's kept column."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    last = logits[rows, column.to(logits.device)]
    return last.gather(1, answer_ids[:, None]).squeeze(1) - last.gather(1, wrong_ids[:, None]).squeeze(1)


def sweep_logit_diff(column: torch.Tensor, answer_ids: torch.Tensor, wrong_ids: torch.Tensor):
    """A `HookedModel.sweep` metric: per-row logit difference of the repeated batch."""

    def metric(output: torch.Tensor, repeated) -> torch.Tensor:
        k = output.shape[0] // column.shape[0]
        return logit_diff(output, column.repeat(k), answer_ids.repeat(k), wrong_ids.repeat(k))

    return metric


@dataclass
class Normaliser:
    """Maps mean logit differences to clean = 1, corrupted = 0."""

    clean: float
    corrupted: float
    min_gap: float = 1e-6

    def __post_init__(self) -> None:
        if abs(self.clean - self.corrupted) < self.min_gap:
            raise AnalyzerError(
                f"clean and corrupted logit differences are equal ({self.clean:.4g}); the corruption changes "
                "nothing the metric sees, so patching cannot be normalised. Use pairs whose answers differ"
            )

    def __call__(self, value):
        return (value - self.corrupted) / (self.clean - self.corrupted)
