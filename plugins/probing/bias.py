"""Association measures on word vectors: WEAT and definitional directions (no model here).

Rows of every matrix are vectors (static embeddings or contextual representations alike).

WEAT (Caliskan, Bryson & Narayanan 2017). For a word w and attribute sets A, B:

    s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b)

For target sets X, Y the test statistic is sum_{x in X} s(x) - sum_{y in Y} s(y) and the
effect size is (mean_{x in X} s(x) - mean_{y in Y} s(y)) / std_{w in X u Y} s(w), the standard
deviation with ddof=1 as in the paper. The one-sided permutation p-value is the fraction of
re-partitions of X u Y into sets of sizes |X| and |Y| whose statistic is >= the observed one:
every partition when there are at most `n_permutations` of them (exact; the observed one is
among them), else `n_permutations` random ones drawn with `numpy.random.Generator(seed)`, with
p = (1 + count) / (1 + n_permutations) so a Monte-Carlo p is never 0 (Phipson & Smyth 2010).
s(w) is computed once; each partition's statistic is then a sum of indexed entries, so 10,000
permutations are a few milliseconds.

Definitional direction (Bolukbasi et al. 2016). Each pair (a_i, b_i) is centred on its own
mean, giving +-(a_i - b_i)/2; the direction is the first principal component of those
vectors (their mean is zero by construction, so it is the top right singular vector of the
differences a_i - b_i). Its sign is fixed so that mean_i (a_i - b_i) . direction > 0: it
points from the b side to the a side. `method="mean"` is the normalised mean difference
instead. Both report the share of the pair-centred variance that lies along the direction
(for "pca" the explained-variance ratio of the first component): near 1 means the pairs
differ along one common axis, near 1/min(n_pairs, d) means they share no single axis.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DIRECTION_METHODS = ("pca", "mean")


def _matrix(vectors, what: str = "vectors") -> np.ndarray:
    """float64 [n, d] from a tensor, array or list of vectors (a single vector is one row)."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().cpu().double().numpy()
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{what}: expected [n, d] vectors, got shape {array.shape}")
    return array


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


def association(w, a, b) -> np.ndarray:
    """s(w, A, B) = mean cos(w, a) - mean cos(w, b) for each row w of `w` (A = rows of a, B = rows of b)."""
    w = _unit_rows(_matrix(w, "W"))
    a = _unit_rows(_matrix(a, "A"))
    b = _unit_rows(_matrix(b, "B"))
    return (w @ a.T).mean(axis=1) - (w @ b.T).mean(axis=1)


def _check_sets(x, y, a, b) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    sets = [_matrix(m, name) for m, name in ((x, "X"), (y, "Y"), (a, "A"), (b, "B"))]
    for matrix, name in zip(sets, "XYAB", strict=True):
        if matrix.shape[0] < 1:
            raise ValueError(f"WEAT set {name} is empty")
    if len({m.shape[1] for m in sets}) != 1:
        raise ValueError(f"WEAT sets have different widths: {[m.shape[1] for m in sets]}")
    return sets[0], sets[1], sets[2], sets[3]


def _effect(s_x: np.ndarray, s_y: np.ndarray) -> float:
    pooled = np.concatenate([s_x, s_y])
    std = float(np.std(pooled, ddof=1)) if pooled.size > 1 else 0.0
    if std == 0.0:
        return 0.0  # every target word is equally associated: no difference to scale
    return float((s_x.mean() - s_y.mean()) / std)


def weat_effect_size(x, y, a, b) -> float:
    """(mean_x s - mean_y s) / std_{w in X u Y} s (ddof=1); 0 when every s(w) is equal."""
    x, y, a, b = _check_sets(x, y, a, b)
    return _effect(association(x, a, b), association(y, a, b))


def weat_statistic(x, y, a, b) -> float:
    """sum_x s(x, A, B) - sum_y s(y, A, B) (the permutation test's statistic)."""
    x, y, a, b = _check_sets(x, y, a, b)
    return float(association(x, a, b).sum() - association(y, a, b).sum())


@dataclass(frozen=True)
class WeatResult:
    effect_size: float
    statistic: float
    p_value: float  # one-sided: partitions with statistic >= the observed one
    n_permutations: int  # partitions counted (all of them when exact)
    exact: bool  # every partition enumerated (else random permutations under the seed)


def weat_permutation_test(x, y, a, b, n_permutations: int = 10000, seed: int = 0) -> WeatResult:
    """Effect size, statistic and one-sided permutation p-value (see the module docstring)."""
    x, y, a, b = _check_sets(x, y, a, b)
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}")
    s_x, s_y = association(x, a, b), association(y, a, b)
    scores = np.concatenate([s_x, s_y])
    n, k = scores.size, s_x.size
    total = float(scores.sum())
    observed = float(s_x.sum() - s_y.sum())
    # partitions whose statistic equals the observed one up to rounding count as >=
    tolerance = 1e-12 * max(1.0, float(np.abs(scores).sum()))
    n_partitions = math.comb(n, k)
    if n_partitions <= n_permutations:
        index = np.fromiter(
            itertools.chain.from_iterable(itertools.combinations(range(n), k)), dtype=np.int64, count=n_partitions * k
        ).reshape(n_partitions, k)
        stats = 2.0 * scores[index].sum(axis=1) - total  # sum_x - sum_y = 2 sum_x - total
        count = int((stats >= observed - tolerance).sum())
        p_value, used, exact = count / n_partitions, n_partitions, True
    else:
        rng = np.random.default_rng(seed)
        order = rng.permuted(np.tile(np.arange(n), (n_permutations, 1)), axis=1)[:, :k]
        stats = 2.0 * scores[order].sum(axis=1) - total
        count = int((stats >= observed - tolerance).sum())
        p_value, used, exact = (1 + count) / (1 + n_permutations), n_permutations, False
    return WeatResult(_effect(s_x, s_y), observed, float(p_value), int(used), exact)


@dataclass(frozen=True)
class Direction:
    vector: np.ndarray  # unit vector, pointing from the b side to the a side
    explained_variance: float  # share of the pair-centred variance along `vector`
    method: str


def definitional_direction(pairs_a, pairs_b, method: str = "pca") -> Direction:
    """A direction from definitional pairs (rows of pairs_a paired with rows of pairs_b)."""
    if method not in DIRECTION_METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(DIRECTION_METHODS)}")
    a, b = _matrix(pairs_a, "pairs_a"), _matrix(pairs_b, "pairs_b")
    if a.shape != b.shape:
        raise ValueError(f"pairs_a {a.shape} and pairs_b {b.shape} differ in shape")
    diffs = a - b
    total = float((diffs**2).sum())
    mean_diff = diffs.mean(axis=0)
    if total == 0.0:
        raise ValueError("every pair is identical: no direction is defined")
    if method == "pca":
        # the pair-centred vectors +-(a - b)/2 have zero mean: their PCA is the SVD of the differences
        _, _, vt = np.linalg.svd(diffs, full_matrices=False)
        vector = vt[0]
    else:
        norm = float(np.linalg.norm(mean_diff))
        if norm == 0.0:
            raise ValueError("the pair differences cancel out: the mean difference is zero")
        vector = mean_diff / norm
    if float(mean_diff @ vector) < 0:
        vector = -vector
    explained = float(((diffs @ vector) ** 2).sum()) / total
    return Direction(vector, explained, method)


def project(vectors, direction) -> np.ndarray:
    """Scalar projections of the rows of `vectors` onto `direction` (normalised here)."""
    d = _matrix(direction, "direction")[0]
    norm = float(np.linalg.norm(d))
    if norm == 0.0:
        raise ValueError("direction is the zero vector")
    return _matrix(vectors) @ (d / norm)


def pair_margins(pairs_a, pairs_b, direction) -> np.ndarray:
    """(a_i - b_i) . direction for each pair (all > 0 when the pairs agree on the sign)."""
    return project(_matrix(pairs_a) - _matrix(pairs_b), direction)


__all__: Sequence[str] = (
    "DIRECTION_METHODS",
    "Direction",
    "WeatResult",
    "association",
    "definitional_direction",
    "pair_margins",
    "project",
    "weat_effect_size",
    "weat_permutation_test",
    "weat_statistic",
)
