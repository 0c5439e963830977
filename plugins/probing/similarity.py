"""Representation-similarity engine: linear and RBF CKA, minibatch CKA, and RSA.

Everything here is a plain tensor API so the `representation_similarity` and `cross_lingual`
analyzers can stay thin. Two design choices shape the module:

* Linear CKA is computed in *feature space*. Activations are usually collected over many
  tokens (n in the tens of thousands) while widths are a few thousand at most, so an n x n
  Gram matrix would dominate memory. Both the biased and the unbiased HSIC are rewritten in
  terms of d x d products, per-row squared norms and n-vectors, which is exact (not an
  approximation); the Gram-matrix forms are kept as `*_gram` references so tests can prove
  the equality.
* All arithmetic is float64. CKA is a ratio of differences of large sums (especially the
  unbiased estimator), and float32 cancellation is visible at the 1e-4 level for realistic n.

References: Kornblith et al. 2019 (CKA), Song et al. 2012 (unbiased HSIC), Nguyen et al. 2021
(debiased and minibatch CKA), Kriegeskorte et al. 2008 (RSA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from scipy.stats import spearmanr

from interpsuite.errors import ConfigError

__all__ = [
    "MinibatchCKA",
    "cka_matrix",
    "gram_linear",
    "gram_rbf",
    "hsic",
    "hsic_gram",
    "linear_cka",
    "linear_cka_gram",
    "rbf_cka",
    "rdm",
    "rsa",
    "rsa_score",
]

RdmMetric = Literal["correlation", "euclidean"]

_MIN_DEBIASED = 4  # the unbiased HSIC divides by n(n-3)(n-1)(n-2)


# --------------------------------------------------------------------------- validation


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    """Reject non-2-D input early: a silently flattened [batch, seq, d] tensor would mix examples."""
    if not isinstance(x, torch.Tensor):
        raise ConfigError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ConfigError(
            f"{name} must be 2-D [n_examples, n_features], got shape {tuple(x.shape)}; "
            "flatten batch/sequence dimensions into the example axis first"
        )
    return x.detach().to(dtype=torch.float64)


def _check_pair(x: torch.Tensor, y: torch.Tensor, debiased: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CKA compares the same examples seen by two representations, so the row counts must agree."""
    x = _as_matrix(x, "x")
    y = _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"x and y must have the same number of examples (rows): x has {x.shape[0]}, y has {y.shape[0]}"
        )
    _check_n(x.shape[0], debiased)
    return x, y


def _check_n(n: int, debiased: bool) -> None:
    """The unbiased estimator is undefined below 4 examples; the biased one below 2."""
    if debiased and n < _MIN_DEBIASED:
        raise ConfigError(f"debiased HSIC/CKA needs at least {_MIN_DEBIASED} examples, got {n}")
    if not debiased and n < 2:
        raise ConfigError(f"CKA needs at least 2 examples, got {n}")


def _ratio(xy: float, xx: float, yy: float) -> float:
    """Normalise HSIC into CKA; a constant representation has no variance, so CKA is reported as 0."""
    denom = xx * yy
    if denom <= 0.0:
        return 0.0
    return xy / math.sqrt(denom)


# --------------------------------------------------------------------------- feature-space HSIC


@dataclass(frozen=True)
class _HSICStats:
    """Per-representation quantities that every pairwise HSIC reuses.

    Precomputing them once per layer is what makes `cka_matrix` cost one d_i x d_j product per
    pair instead of re-centering and re-normalising every layer for every pair.
    """

    features: torch.Tensor  # centred (biased) or raw (debiased) [n, d], float64
    debiased: bool
    row_sq_norms: torch.Tensor | None = None  # diag(K), [n]
    kt_ones: torch.Tensor | None = None  # K~ 1 where K~ = K with zeroed diagonal, [n]
    ones_kt_ones: float = 0.0  # 1^T K~ 1

    @property
    def n(self) -> int:
        return int(self.features.shape[0])


def _stats(x: torch.Tensor, debiased: bool) -> _HSICStats:
    """Build the reusable terms of HSIC without materialising K = X X^T."""
    # Column-centring changes nothing mathematically (the biased form centres anyway and the
    # unbiased estimator is translation invariant) but keeps the sums small, avoiding cancellation.
    xc = x - x.mean(dim=0, keepdim=True)
    if not debiased:
        return _HSICStats(features=xc, debiased=False)
    row_sq = (xc * xc).sum(dim=1)
    kt_ones = xc @ xc.sum(dim=0) - row_sq  # K 1 - diag(K)
    return _HSICStats(
        features=xc,
        debiased=True,
        row_sq_norms=row_sq,
        kt_ones=kt_ones,
        ones_kt_ones=float(kt_ones.sum()),
    )


def _hsic_from_stats(a: _HSICStats, b: _HSICStats) -> float:
    """HSIC from precomputed stats; only the cross term ||X^T Y||_F^2 costs O(n d1 d2)."""
    n = a.n
    cross = a.features.T @ b.features
    tr_kl = float((cross * cross).sum())  # tr(K L) = ||X^T Y||_F^2
    if not a.debiased:
        return tr_kl / (n - 1) ** 2
    assert a.row_sq_norms is not None and b.row_sq_norms is not None
    assert a.kt_ones is not None and b.kt_ones is not None
    # Song et al. 2012, eq. 5, with every n x n quantity rewritten:
    #   tr(K~ L~)    = tr(K L) - sum_i ||x_i||^2 ||y_i||^2
    #   1^T K~ L~ 1  = (K~ 1) . (L~ 1),  K~ 1 = X (X^T 1) - diag(K)
    tr_kl_tilde = tr_kl - float((a.row_sq_norms * b.row_sq_norms).sum())
    middle = a.ones_kt_ones * b.ones_kt_ones / ((n - 1) * (n - 2))
    last = 2.0 * float(a.kt_ones @ b.kt_ones) / (n - 2)
    return (tr_kl_tilde + middle - last) / (n * (n - 3))


def hsic(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Linear-kernel HSIC in feature space, so memory is O(n d) rather than O(n^2).

    The biased form is ||Xc^T Yc||_F^2 / (n-1)^2 (Kornblith et al. 2019); the debiased form is
    the unbiased estimator of Song et al. 2012, exactly equal to `hsic_gram(..., debiased=True)`.
    """
    x, y = _check_pair(x, y, debiased)
    return _hsic_from_stats(_stats(x, debiased), _stats(y, debiased))


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same n examples.

    Invariant to orthogonal transforms and isotropic scaling of either side, but not to general
    invertible linear maps: that is the point of CKA versus CCA. The debiased variant removes
    the positive bias of the plug-in estimator that makes unrelated wide representations look
    similar when d is comparable to or larger than n.
    """
    x, y = _check_pair(x, y, debiased)
    sx, sy = _stats(x, debiased), _stats(y, debiased)
    return _ratio(_hsic_from_stats(sx, sy), _hsic_from_stats(sx, sx), _hsic_from_stats(sy, sy))


# --------------------------------------------------------------------------- Gram-matrix references


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """Linear-kernel Gram matrix; O(n^2) memory, kept as the reference for the feature-space path."""
    x = _as_matrix(x, "x")
    return x @ x.T


def gram_rbf(x: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    """RBF Gram with bandwidth sigma = threshold * median pairwise distance (O(n^2)).

    Follows Kornblith et al.'s reference code: the median is taken over the full squared-distance
    matrix (diagonal included), so results match theirs for the same threshold. Tying sigma to the
    data makes the kernel scale-invariant, which is what keeps CKA scale-invariant with RBF.
    """
    if threshold <= 0:
        raise ConfigError(f"RBF threshold must be positive, got {threshold}")
    x = _as_matrix(x, "x")
    sq_norms = (x * x).sum(dim=1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    sq_median = float(sq_dist.median())
    if sq_median <= 0.0:
        # Mostly-duplicate rows: any bandwidth gives an all-ones kernel on the duplicates, pick 1.
        sq_median = 1.0
    return torch.exp(-sq_dist / (2.0 * threshold**2 * sq_median))


def _check_grams(k: torch.Tensor, l: torch.Tensor, debiased: bool) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: E741
    """Gram inputs must be square and match, or the traces below silently mean nothing."""
    k = _as_matrix(k, "gram_x")
    l = _as_matrix(l, "gram_y")  # noqa: E741
    for name, g in (("gram_x", k), ("gram_y", l)):
        if g.shape[0] != g.shape[1]:
            raise ConfigError(f"{name} must be square, got shape {tuple(g.shape)}")
    if k.shape[0] != l.shape[0]:
        raise ConfigError(
            f"gram_x and gram_y must cover the same number of examples: gram_x has {k.shape[0]}, "
            f"gram_y has {l.shape[0]}"
        )
    _check_n(k.shape[0], debiased)
    return k, l


def _hsic_gram_checked(k: torch.Tensor, l: torch.Tensor, debiased: bool) -> float:  # noqa: E741
    n = k.shape[0]
    if not debiased:
        h = torch.eye(n, dtype=torch.float64) - 1.0 / n
        return float(torch.trace(k @ h @ l @ h)) / (n - 1) ** 2
    kt = k - torch.diag(torch.diagonal(k))
    lt = l - torch.diag(torch.diagonal(l))
    ones = torch.ones(n, dtype=torch.float64)
    tr = float(torch.trace(kt @ lt))
    middle = float(ones @ kt @ ones) * float(ones @ lt @ ones) / ((n - 1) * (n - 2))
    last = 2.0 * float(ones @ kt @ lt @ ones) / (n - 2)
    return (tr + middle - last) / (n * (n - 3))


def hsic_gram(k: torch.Tensor, l: torch.Tensor, debiased: bool = False) -> float:  # noqa: E741
    """HSIC straight from the textbook n x n formulas: tr(KHLH)/(n-1)^2, or Song et al.'s eq. 5.

    O(n^2) memory and O(n^3) time; it exists as ground truth for the feature-space code and as
    the engine for kernels (RBF) that have no finite feature map.
    """
    k, l = _check_grams(k, l, debiased)  # noqa: E741
    return _hsic_gram_checked(k, l, debiased)


def _cka_gram(k: torch.Tensor, l: torch.Tensor, debiased: bool) -> float:  # noqa: E741
    k, l = _check_grams(k, l, debiased)  # noqa: E741
    return _ratio(
        _hsic_gram_checked(k, l, debiased), _hsic_gram_checked(k, k, debiased), _hsic_gram_checked(l, l, debiased)
    )


def linear_cka_gram(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """Reference linear CKA via n x n Gram matrices; use `linear_cka` for real workloads."""
    x, y = _check_pair(x, y, debiased)
    return _cka_gram(gram_linear(x), gram_linear(y), debiased)


def rbf_cka(x: torch.Tensor, y: torch.Tensor, threshold: float = 0.8, debiased: bool = False) -> float:
    """CKA with RBF kernels (bandwidth = threshold x median distance). O(n^2) memory, O(n^3) time.

    RBF kernels have no finite feature map, so there is no feature-space shortcut: subsample
    examples (a few thousand at most) before calling this.
    """
    x, y = _check_pair(x, y, debiased)
    return _cka_gram(gram_rbf(x, threshold), gram_rbf(y, threshold), debiased)


# --------------------------------------------------------------------------- minibatch CKA


@dataclass
class MinibatchCKA:
    """Streaming linear CKA over minibatches (Nguyen et al. 2021).

    Each `update` computes the unbiased HSIC of the batch for (x, y), (x, x) and (y, y); `value`
    is mean HSIC(x, y) / sqrt(mean HSIC(x, x) * mean HSIC(y, y)). This lets CKA run over far more
    tokens than fit in memory at once.

    Note that this estimates a slightly different quantity than full-data CKA: it is the ratio of
    expected *within-batch* HSICs, so pairs of examples in different batches never contribute.
    With i.i.d. batches it is consistent for the same population CKA, but on a fixed dataset it
    will differ from `linear_cka(..., debiased=True)` by an amount that shrinks as batches grow.
    Batches must hold at least 4 examples (the unbiased estimator's minimum).
    """

    sum_xy: float = 0.0
    sum_xx: float = 0.0
    sum_yy: float = 0.0
    n_batches: int = 0
    n_examples: int = 0
    _widths: tuple[int, int] | None = field(default=None, repr=False)

    def update(self, x_batch: torch.Tensor, y_batch: torch.Tensor) -> None:
        """Fold one batch in; widths must stay fixed so the batches describe the same two spaces."""
        x, y = _check_pair(x_batch, y_batch, debiased=True)
        widths = (int(x.shape[1]), int(y.shape[1]))
        if self._widths is None:
            self._widths = widths
        elif widths != self._widths:
            raise ConfigError(
                f"feature widths changed between batches: first batch had {self._widths}, this one has {widths}"
            )
        sx, sy = _stats(x, True), _stats(y, True)
        self.sum_xy += _hsic_from_stats(sx, sy)
        self.sum_xx += _hsic_from_stats(sx, sx)
        self.sum_yy += _hsic_from_stats(sy, sy)
        self.n_batches += 1
        self.n_examples += int(x.shape[0])

    def value(self) -> float:
        """Current minibatch CKA; asking before any batch is a usage error, not a 0."""
        if self.n_batches == 0:
            raise ConfigError("MinibatchCKA.value() called before any update()")
        k = self.n_batches
        return _ratio(self.sum_xy / k, self.sum_xx / k, self.sum_yy / k)

    def reset(self) -> None:
        """Reuse one accumulator across layer pairs without reallocating."""
        self.sum_xy = self.sum_xx = self.sum_yy = 0.0
        self.n_batches = self.n_examples = 0
        self._widths = None


# --------------------------------------------------------------------------- layer x layer


def cka_matrix(
    features: Sequence[torch.Tensor],
    other: Sequence[torch.Tensor] | None = None,
    debiased: bool = False,
) -> torch.Tensor:
    """Linear CKA for every pair of layers, as a [len(features), len(other)] float64 tensor.

    Per-layer stats and self-HSICs are computed once, so L layers cost L self-products plus one
    cross-product per pair rather than three products per pair. With `other=None` the result is
    the symmetric layer x layer matrix of one model, and only the upper triangle is computed.
    """
    if len(features) == 0:
        raise ConfigError("cka_matrix needs at least one feature matrix")
    mats_a = [_as_matrix(f, f"features[{i}]") for i, f in enumerate(features)]
    symmetric = other is None
    if other is not None and len(other) == 0:
        raise ConfigError("cka_matrix: `other` is empty")
    mats_b = mats_a if other is None else [_as_matrix(f, f"other[{i}]") for i, f in enumerate(other)]
    n = mats_a[0].shape[0]
    for label, mats in (("features", mats_a), ("other", mats_b)):
        for i, m in enumerate(mats):
            if m.shape[0] != n:
                raise ConfigError(
                    f"all inputs must have the same number of examples: features[0] has {n}, "
                    f"{label}[{i}] has {m.shape[0]}"
                )
    _check_n(n, debiased)

    stats_a = [_stats(m, debiased) for m in mats_a]
    stats_b = stats_a if symmetric else [_stats(m, debiased) for m in mats_b]
    self_a = [_hsic_from_stats(s, s) for s in stats_a]
    self_b = self_a if symmetric else [_hsic_from_stats(s, s) for s in stats_b]

    out = torch.zeros(len(stats_a), len(stats_b), dtype=torch.float64)
    for i, sa in enumerate(stats_a):
        for j, sb in enumerate(stats_b):
            if symmetric and j < i:
                out[i, j] = out[j, i]
                continue
            if symmetric and i == j:
                out[i, j] = _ratio(self_a[i], self_a[i], self_a[i])
                continue
            out[i, j] = _ratio(_hsic_from_stats(sa, sb), self_a[i], self_b[j])
    return out


# --------------------------------------------------------------------------- RSA


def rdm(x: torch.Tensor, metric: RdmMetric = "correlation") -> torch.Tensor:
    """Representational dissimilarity matrix [n, n] between examples (rows).

    "correlation" is 1 - Pearson r between rows (the RSA default: insensitive to per-example
    offset and gain); "euclidean" keeps magnitude information.
    """
    x = _as_matrix(x, "x")
    if x.shape[0] < 2:
        raise ConfigError(f"an RDM needs at least 2 examples, got {x.shape[0]}")
    if metric == "correlation":
        if x.shape[1] < 2:
            raise ConfigError("correlation RDM needs at least 2 features per example")
        xc = x - x.mean(dim=1, keepdim=True)
        norms = xc.norm(dim=1, keepdim=True)
        if bool((norms == 0).any()):
            raise ConfigError("correlation RDM is undefined for constant rows; use metric='euclidean'")
        z = xc / norms
        d = 1.0 - z @ z.T
        d.fill_diagonal_(0.0)
        return d.clamp_min(0.0)
    if metric == "euclidean":
        return torch.cdist(x, x)
    raise ConfigError(f"unknown RDM metric {metric!r}; expected 'correlation' or 'euclidean'")


def rsa_score(rdm_a: torch.Tensor, rdm_b: torch.Tensor) -> float:
    """Spearman correlation of the RDMs' upper triangles (diagonal excluded).

    Rank correlation because RDMs from different spaces are only comparable up to a monotone
    transform of their dissimilarity scale.
    """
    a = _as_matrix(rdm_a, "rdm_a")
    b = _as_matrix(rdm_b, "rdm_b")
    if a.shape[0] != a.shape[1] or b.shape[0] != b.shape[1]:
        raise ConfigError(f"RDMs must be square, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape != b.shape:
        raise ConfigError(
            f"RDMs must cover the same number of examples: rdm_a has {a.shape[0]}, rdm_b has {b.shape[0]}"
        )
    n = a.shape[0]
    if n < 3:
        raise ConfigError(f"RSA needs at least 3 examples (2 RDM entries), got {n}")
    iu = torch.triu_indices(n, n, offset=1)
    va = a[iu[0], iu[1]].numpy()
    vb = b[iu[0], iu[1]].numpy()
    rho = spearmanr(va, vb).statistic
    return float(rho)


def rsa(x: torch.Tensor, y: torch.Tensor, metric: RdmMetric = "correlation") -> float:
    """RSA between two representations of the same examples: Spearman of their RDMs."""
    x = _as_matrix(x, "x")
    y = _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"x and y must have the same number of examples (rows): x has {x.shape[0]}, y has {y.shape[0]}"
        )
    return rsa_score(rdm(x, metric), rdm(y, metric))
