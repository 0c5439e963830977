"""Cross-lingual engine: how close translations sit in a layer, and whether they can be retrieved.

Pure torch, no model: each function takes two [n, d] matrices whose row i in `a` and row i in
`b` are translations of one sentence (the parallel set's alignment rule), and is vectorised
(one [n, n] cosine matrix per language pair, no Python loop over rows).

* `translation_cosines`: mean cosine of matched rows (translations) and of every unmatched
  pair (non-translations); their gap is how much closer a translation is than a random other
  sentence.
* `retrieval_accuracy`: accuracy@1 and mean reciprocal rank of nearest-neighbour retrieval by
  cosine from a's rows into b's rows. Ties (within `TIE_TOL`) are broken at random in
  expectation: a row whose translation ties with t others counts 1 / (1 + t) towards
  accuracy@1, so a layer that maps everything to one vector scores chance, not 1.0.
* `center_rows`: subtract the mean row. Applied per language, it removes the
  language-specific offset (a shared "this is French" direction) that otherwise dominates
  cosine between sentences of different languages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "TIE_TOL",
    "PairMetrics",
    "center_rows",
    "cosine_matrix",
    "max_abs_cosine",
    "pair_metrics",
    "retrieval_accuracy",
    "translation_cosines",
]

#: cosines closer than this to the translation's cosine count as ties
TIE_TOL = 1e-6


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or b.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [n, d] matrices of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 aligned rows, got {a.shape[0]}")


def center_rows(x: torch.Tensor) -> torch.Tensor:
    """x minus its mean row (one language's offset at one layer)."""
    x = x.double()
    return x - x.mean(0, keepdim=True)


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[n, m] cosines between a's and b's rows, in float64; a zero row has cosine 0 with everything."""
    a = a.double()
    b = b.double()
    na = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    nb = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return na @ nb.T


def _cosines_from(sim: torch.Tensor) -> tuple[float, float]:
    n = sim.shape[0]
    matched = torch.diagonal(sim)
    unmatched = (sim.sum() - matched.sum()) / (n * (n - 1))
    return float(matched.mean()), float(unmatched)


def _retrieval_from(sim: torch.Tensor) -> tuple[float, float]:
    correct = torch.diagonal(sim).unsqueeze(1)
    better = (sim > correct + TIE_TOL).sum(1).double()
    ties = ((sim - correct).abs() <= TIE_TOL).sum(1).double() - 1.0  # minus the translation itself
    at_1 = torch.where(better == 0, 1.0 / (1.0 + ties), torch.zeros_like(ties))
    rank = 1.0 + better + ties / 2.0
    return float(at_1.mean()), float((1.0 / rank).mean())


def translation_cosines(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(mean cosine of matched rows, mean cosine over all n * (n - 1) unmatched pairs)."""
    _check_pair(a, b)
    return _cosines_from(cosine_matrix(a, b))


def retrieval_accuracy(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(accuracy@1, mean reciprocal rank) of retrieving b[i] as a[i]'s cosine nearest neighbour.

    With t ties and g strictly better candidates, a row scores 1 / (1 + t) at @1 when g = 0
    (else 0), and its rank is 1 + g + t / 2 (the expected rank under random tie-breaking).
    """
    _check_pair(a, b)
    return _retrieval_from(cosine_matrix(a, b))


@dataclass(frozen=True)
class PairMetrics:
    """Everything the analyzer reports for one ordered language pair at one layer."""

    translation_cosine: float
    non_translation_cosine: float
    retrieval_at_1: float
    mrr: float
    max_abs_cosine: float

    @property
    def gap(self) -> float:
        return self.translation_cosine - self.non_translation_cosine


def pair_metrics(a: torch.Tensor, b: torch.Tensor) -> PairMetrics:
    """Cosines, retrieval and the range check of one pair from ONE cosine matrix."""
    _check_pair(a, b)
    sim = cosine_matrix(a, b)
    matched, unmatched = _cosines_from(sim)
    at_1, mrr = _retrieval_from(sim)
    return PairMetrics(matched, unmatched, at_1, mrr, float(sim.abs().max()))


def max_abs_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |cosine| between any row of a and any row of b (a range check: must be <= 1)."""
    return float(cosine_matrix(a, b).abs().max())
