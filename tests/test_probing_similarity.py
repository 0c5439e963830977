"""Tests for the representation-similarity engine (linear/RBF CKA, minibatch CKA, RSA)."""

from __future__ import annotations

import pytest
import torch
from interpsuite_plugins.probing.similarity import (
    MinibatchCKA,
    cka_matrix,
    gram_linear,
    hsic,
    hsic_gram,
    linear_cka,
    linear_cka_gram,
    rbf_cka,
    rdm,
    rsa,
    rsa_score,
)

from interpsuite.errors import ConfigError

MODES = [False, True]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _related(seed: int, n: int = 60, d1: int = 8, d2: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair with real but partial shared structure, so CKA is strictly between 0 and 1."""
    g = _gen(seed)
    x = _randn(g, n, d1)
    y = x @ _randn(g, d1, d2) + 0.7 * _randn(g, n, d2) + 2.0  # offset checks centring too
    return x, y


def _orthogonal(g: torch.Generator, d: int) -> torch.Tensor:
    q, r = torch.linalg.qr(_randn(g, d, d))
    return q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize("debiased", MODES)
def test_self_similarity_is_one(debiased: bool) -> None:
    x, _ = _related(0)
    assert linear_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x.float(), x.float(), debiased=debiased) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("debiased", MODES)
def test_invariant_to_orthogonal_and_isotropic_scaling(debiased: bool) -> None:
    x, y = _related(1)
    g = _gen(11)
    base = linear_cka(x, y, debiased=debiased)
    assert 0.1 < base < 0.99
    qx, qy = _orthogonal(g, x.shape[1]), _orthogonal(g, y.shape[1])
    assert linear_cka(x @ qx, y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, y @ qy, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(3.7 * x, y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, 0.01 * y, debiased=debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(5.0 * x @ qx, 0.2 * y @ qy, debiased=debiased) == pytest.approx(base, abs=1e-10)


@pytest.mark.parametrize("debiased", MODES)
def test_not_invariant_to_badly_conditioned_linear_map(debiased: bool) -> None:
    x, y = _related(2)
    g = _gen(12)
    d = x.shape[1]
    scales = torch.logspace(0, 3, d, dtype=torch.float64)  # condition number 1e3
    a = _orthogonal(g, d) @ torch.diag(scales) @ _orthogonal(g, d)
    assert torch.linalg.matrix_rank(a) == d
    base = linear_cka(x, y, debiased=debiased)
    mapped = linear_cka(x @ a, y, debiased=debiased)
    assert abs(mapped - base) > 0.01


def test_debiased_removes_bias_for_independent_inputs() -> None:
    g = _gen(3)
    x, y = _randn(g, 500, 40), _randn(g, 500, 40)
    assert abs(linear_cka(x, y, debiased=True)) < 0.05

    # d >> n: the plug-in estimator reports large similarity between unrelated matrices.
    x, y = _randn(g, 40, 1000), _randn(g, 40, 1000)
    biased = linear_cka(x, y, debiased=False)
    debiased = linear_cka(x, y, debiased=True)
    assert biased > 0.5
    assert abs(debiased) < 0.05


@pytest.mark.parametrize("debiased", MODES)
@pytest.mark.parametrize("seed", [4, 5])
def test_feature_space_equals_gram_reference(debiased: bool, seed: int) -> None:
    x, y = _related(seed, n=37, d1=9, d2=4)
    hf = hsic(x, y, debiased=debiased)
    hg = hsic_gram(gram_linear(x), gram_linear(y), debiased=debiased)
    assert hf == pytest.approx(hg, rel=1e-10, abs=1e-10)
    assert hsic(x, x, debiased) == pytest.approx(hsic_gram(gram_linear(x), gram_linear(x), debiased), rel=1e-10)
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(linear_cka_gram(x, y, debiased=debiased), abs=1e-10)


def test_feature_space_equals_gram_at_minimum_n() -> None:
    g = _gen(6)
    x, y = _randn(g, 4, 3), _randn(g, 4, 5)
    assert hsic(x, y, True) == pytest.approx(hsic_gram(gram_linear(x), gram_linear(y), True), rel=1e-10, abs=1e-10)


def test_minibatch_equals_mean_of_per_batch_hsic() -> None:
    x, y = _related(7, n=120)
    acc = MinibatchCKA()
    batches = [(x[i : i + 30], y[i : i + 30]) for i in range(0, 120, 30)]
    for xb, yb in batches:
        acc.update(xb, yb)
    mxy = sum(hsic(xb, yb, True) for xb, yb in batches) / 4
    mxx = sum(hsic(xb, xb, True) for xb, _ in batches) / 4
    myy = sum(hsic(yb, yb, True) for _, yb in batches) / 4
    assert acc.n_batches == 4 and acc.n_examples == 120
    assert acc.sum_xy / 4 == pytest.approx(mxy, rel=1e-12)
    assert acc.value() == pytest.approx(mxy / (mxx * myy) ** 0.5, rel=1e-12)

    single = MinibatchCKA()
    single.update(x, y)
    assert single.value() == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-12)

    single.reset()
    with pytest.raises(ConfigError, match="before any update"):
        single.value()


def test_minibatch_approaches_full_data_for_large_batches() -> None:
    x, y = _related(8, n=4000, d1=16, d2=12)
    full = linear_cka(x, y, debiased=True)
    acc = MinibatchCKA()
    for i in range(0, 4000, 1000):
        acc.update(x[i : i + 1000], y[i : i + 1000])
    assert acc.value() == pytest.approx(full, abs=0.02)


def test_minibatch_rejects_width_change_and_small_batches() -> None:
    g = _gen(9)
    acc = MinibatchCKA()
    acc.update(_randn(g, 10, 3), _randn(g, 10, 2))
    with pytest.raises(ConfigError, match="widths changed"):
        acc.update(_randn(g, 10, 4), _randn(g, 10, 2))
    with pytest.raises(ConfigError, match="at least 4"):
        acc.update(_randn(g, 3, 3), _randn(g, 3, 2))


@pytest.mark.parametrize("debiased", MODES)
def test_cka_matrix_symmetric_unit_diagonal_and_matches_pairwise(debiased: bool) -> None:
    g = _gen(10)
    base = _randn(g, 50, 6)
    layers = [base @ _randn(g, 6, d) + 0.5 * _randn(g, 50, d) for d in (4, 7, 5)]
    m = cka_matrix(layers, debiased=debiased)
    assert m.shape == (3, 3)
    assert torch.equal(m, m.T)
    assert torch.allclose(torch.diagonal(m), torch.ones(3, dtype=torch.float64), atol=1e-12)
    for i in range(3):
        for j in range(3):
            assert m[i, j].item() == pytest.approx(linear_cka(layers[i], layers[j], debiased=debiased), abs=1e-12)

    other = layers[:2]
    r = cka_matrix(layers, other, debiased=debiased)
    assert r.shape == (3, 2)
    for i in range(3):
        for j in range(2):
            assert r[i, j].item() == pytest.approx(linear_cka(layers[i], other[j], debiased=debiased), abs=1e-12)


def test_rbf_cka_basic_properties() -> None:
    x, y = _related(13, n=40)
    g = _gen(14)
    assert rbf_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert rbf_cka(x, x, debiased=True) == pytest.approx(1.0, abs=1e-12)
    base = rbf_cka(x, y)
    assert 0.0 < base < 1.0
    # Median-heuristic bandwidth makes RBF CKA invariant to isotropic scaling and rotations.
    assert rbf_cka(4.0 * x @ _orthogonal(g, x.shape[1]), y) == pytest.approx(base, abs=1e-10)
    assert rbf_cka(x, y, threshold=0.5) != pytest.approx(base, abs=1e-6)
    with pytest.raises(ConfigError, match="threshold"):
        rbf_cka(x, y, threshold=0.0)


@pytest.mark.parametrize("metric", ["correlation", "euclidean"])
def test_rsa_identity_and_monotone_transform(metric: str) -> None:
    g = _gen(15)
    x = _randn(g, 25, 10)
    assert rsa(x, x, metric=metric) == pytest.approx(1.0, abs=1e-12)
    r = rdm(x, metric=metric)
    assert r.shape == (25, 25)
    assert torch.allclose(r, r.T)
    assert torch.all(torch.diagonal(r) == 0)
    assert rsa_score(r, torch.exp(3.0 * r) + r**3) == pytest.approx(1.0, abs=1e-12)
    assert rsa(x, _randn(g, 25, 10), metric=metric) < 0.5


def test_correlation_rdm_values() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])
    r = rdm(x)
    assert r[0, 1].item() == pytest.approx(0.0, abs=1e-12)
    assert r[0, 2].item() == pytest.approx(2.0, abs=1e-12)


def test_mismatched_example_counts_name_both() -> None:
    g = _gen(16)
    x, y = _randn(g, 10, 3), _randn(g, 12, 3)
    for fn in (linear_cka, hsic, rbf_cka, rsa):
        with pytest.raises(ConfigError, match=r"10.*12"):
            fn(x, y)
    with pytest.raises(ConfigError, match=r"10.*12"):
        cka_matrix([x, y])
    with pytest.raises(ConfigError, match=r"10.*12"):
        MinibatchCKA().update(x, y)
    with pytest.raises(ConfigError, match=r"10.*12"):
        hsic_gram(gram_linear(x), gram_linear(y))


def test_too_few_examples_for_debiased() -> None:
    g = _gen(17)
    x, y = _randn(g, 3, 5), _randn(g, 3, 2)
    with pytest.raises(ConfigError, match="at least 4 examples, got 3"):
        linear_cka(x, y, debiased=True)
    with pytest.raises(ConfigError, match="at least 4 examples, got 3"):
        cka_matrix([x], debiased=True)
    assert 0.0 <= linear_cka(x, y) <= 1.0  # biased is still defined


def test_non_2d_inputs_rejected() -> None:
    g = _gen(18)
    x3 = _randn(g, 2, 5, 3)
    x2 = _randn(g, 10, 3)
    with pytest.raises(ConfigError, match="2-D"):
        linear_cka(x3, x2)
    with pytest.raises(ConfigError, match="2-D"):
        linear_cka(x2, _randn(g, 10))
    with pytest.raises(ConfigError, match="2-D"):
        cka_matrix([x2, x3])
    with pytest.raises(ConfigError, match="2-D"):
        rdm(_randn(g, 10))
    with pytest.raises(ConfigError, match="square"):
        rsa_score(x2, x2)
    with pytest.raises(ConfigError, match="unknown RDM metric"):
        rdm(x2, metric="cosine")  # type: ignore[arg-type]
