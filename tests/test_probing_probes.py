"""Linear-probe engine: planted signal is found, noise is not, and bad input fails before fitting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interpsuite_plugins.probing import probes
from interpsuite_plugins.probing.probes import (
    ProbeConfig,
    ProbeReport,
    control_labels,
    grouped_split,
    online_codelength,
    probe_layers,
)

from interpsuite.errors import ConfigError

N, D, N_GROUPS = 1200, 32, 60


def _planted(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D))
    w = rng.standard_normal(D)
    y = (x @ w > 0).astype(int)
    groups = np.repeat(np.arange(N_GROUPS), n // N_GROUPS)
    return x, y, groups, w


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def planted_report() -> tuple[ProbeReport, np.ndarray]:
    x, y, groups, w = _planted()
    words = [f"w{i}" for i in np.random.default_rng(1).integers(0, 80, N)]
    return probe_layers({"resid.3": torch.tensor(x, dtype=torch.float32)}, y, groups, word_types=words), w


def test_planted_direction_is_found(planted_report: tuple[ProbeReport, np.ndarray]) -> None:
    report, w = planted_report
    lp = report.layer("resid.3")
    assert lp.accuracy_mean > 0.95
    assert lp.f1_mean > 0.95
    assert lp.weights.shape == (D,)
    assert _cos(lp.direction, w) > 0.99
    assert report.n_examples == N and report.n_groups == N_GROUPS and report.classes == [0, 1]
    table = report.table()
    assert list(table["layer"]) == ["resid.3"]
    assert table.loc[0, "accuracy"] == pytest.approx(lp.accuracy_mean)


def test_weights_are_in_original_feature_space() -> None:
    # x_raw = x * s + b: the true raw-space direction is w / s, which a standardised probe only
    # recovers if its coefficients are mapped back.
    x, y, groups, w = _planted(seed=2)
    s = np.random.default_rng(3).uniform(0.2, 5.0, D)
    x_raw = x * s + 3.0
    lp = probe_layers({0: x_raw}, y, groups, seeds=[0]).layers[0]
    assert _cos(lp.direction, w / s) > 0.99
    margin = x_raw @ lp.weights + lp.intercept[0]
    assert ((margin > 0).astype(int) == y).mean() > 0.95


def test_selectivity_is_task_minus_control(planted_report: tuple[ProbeReport, np.ndarray]) -> None:
    lp = planted_report[0].layers[0]
    assert lp.control_accuracy_mean is not None and lp.selectivity is not None
    assert lp.selectivity == pytest.approx(lp.accuracy_mean - lp.control_accuracy_mean)
    assert lp.control_accuracy_mean == pytest.approx(np.mean([r.control_accuracy for r in lp.per_seed]))
    assert lp.selectivity > 0.2


def test_ci_contains_per_seed_mean(planted_report: tuple[ProbeReport, np.ndarray]) -> None:
    lp = planted_report[0].layers[0]
    assert len(lp.per_seed) == 3
    for ci, values in ((lp.accuracy_ci, [r.accuracy for r in lp.per_seed]), (lp.f1_ci, [r.f1 for r in lp.per_seed])):
        assert ci[0] <= np.mean(values) <= ci[1]
    assert lp.accuracy_ci[0] < lp.accuracy_ci[1]


def test_random_labels_stay_at_chance() -> None:
    x, _, groups, _ = _planted(seed=4, n=600)
    y = np.random.default_rng(5).integers(0, 2, 600)
    report = probe_layers({0: x}, y, groups, word_types=[str(i % 40) for i in range(600)])
    lp = report.layers[0]
    assert abs(lp.accuracy_mean - report.majority_baseline) < 0.1
    assert lp.selectivity is not None and abs(lp.selectivity) < 0.15


def test_control_labels_are_a_function_of_word_type_and_seeded() -> None:
    rng = np.random.default_rng(6)
    words = [f"tok{i}" for i in rng.integers(0, 30, 500)]
    labels = list(rng.choice(["NOUN", "VERB", "ADJ"], 500, p=[0.6, 0.3, 0.1]))
    ctrl = control_labels(words, labels, seed=0)
    assert len(ctrl) == 500
    by_type: dict[str, set[str]] = {}
    for word, lab in zip(words, ctrl, strict=True):
        by_type.setdefault(word, set()).add(str(lab))
    assert all(len(v) == 1 for v in by_type.values())
    assert set(ctrl) <= {"NOUN", "VERB", "ADJ"}
    assert list(ctrl) == list(control_labels(words, labels, seed=0))
    assert any(control_labels(words, labels, seed=s).tolist() != ctrl.tolist() for s in (1, 2, 3))


def test_grouped_splits_never_share_a_group() -> None:
    groups = np.repeat(np.arange(25), 7)
    split = grouped_split(groups, seed=3)
    parts = [set(groups[idx]) for idx in (split.train, split.val, split.test)]
    assert all(parts)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate([split.train, split.val, split.test]).tolist()) == list(range(len(groups)))
    again = grouped_split(groups, seed=3)
    assert np.array_equal(split.test, again.test)
    assert not np.array_equal(split.test, grouped_split(groups, seed=4).test)


def test_stacked_tensor_string_labels_multiclass() -> None:
    rng = np.random.default_rng(7)
    n = 600
    x = rng.standard_normal((n, 8))
    names = np.array(["a", "b", "c"])
    y = names[np.argmax(x[:, :3], axis=1)]
    feats = torch.tensor(np.stack([rng.standard_normal((n, 8)), x]), dtype=torch.float32)
    report = probe_layers(feats, list(y), np.arange(n) // 10, seeds=[0, 1])
    assert report.classes == ["a", "b", "c"]
    assert [lp.layer for lp in report.layers] == [0, 1]
    assert report.layer(1).accuracy_mean > 0.85 > report.layer(0).accuracy_mean + 0.3
    assert report.layer(1).weights.shape == (3, 8)
    assert report.layer(1).selectivity is None


def test_mdl_compresses_planted_but_not_random() -> None:
    x, y, groups, _ = _planted(seed=8, n=600)
    planted = online_codelength(x, y, groups=groups)
    assert planted.compression > 1.5
    assert planted.block_ends[-1] == 600 and planted.uniform_bits == pytest.approx(600.0)
    assert planted.codelength_bits == pytest.approx(sum(planted.block_bits))
    random = online_codelength(x, np.random.default_rng(9).integers(0, 2, 600), groups=groups)
    assert random.compression < 1.15


def _bad_cases() -> list[tuple[str, dict, str]]:
    x, y, groups, _ = _planted(seed=10, n=120)
    nan_x = x.copy()
    nan_x[5, 3] = np.nan
    return [
        ("single class", {"features": {0: x}, "labels": [1] * 120, "groups": groups}, "single class"),
        ("too few groups", {"features": {0: x}, "labels": y, "groups": np.arange(120) % 2}, "got 2 groups"),
        ("labels mismatch", {"features": {0: x}, "labels": y[:100], "groups": groups}, "100 labels for 120"),
        ("groups mismatch", {"features": {0: x}, "labels": y, "groups": groups[:90]}, "90 groups for 120"),
        ("non-finite", {"features": {0: x, 1: nan_x}, "labels": y, "groups": groups}, "layer 1 contain non-finite"),
        (
            "word types mismatch",
            {"features": {0: x}, "labels": y, "groups": groups, "word_types": ["a"] * 7},
            "7 word types for 120",
        ),
        ("bad grid", {"features": {0: x}, "labels": y, "groups": groups, "config": ProbeConfig(c_grid=())}, "c_grid"),
    ]


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_raises_config_error_before_fitting(case: tuple[str, dict, str], monkeypatch) -> None:
    _, kwargs, message = case

    def no_fit(*args, **kw):
        raise AssertionError("fit_probe ran before input validation")

    monkeypatch.setattr(probes, "fit_probe", no_fit)
    monkeypatch.setattr(probes, "fit_probes_batched", no_fit)
    with pytest.raises(ConfigError, match=message) as info:
        probe_layers(**kwargs)
    assert "\n" not in str(info.value)


def test_mdl_bad_input() -> None:
    x, y, _, _ = _planted(seed=11, n=120)
    with pytest.raises(ConfigError, match="single class"):
        online_codelength(x, [0] * 120)
    with pytest.raises(ConfigError, match="non-finite"):
        online_codelength(np.full((120, D), np.inf), y)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_batched_solver_reaches_the_sklearn_optimum(n_classes: int) -> None:
    """The batched L-BFGS solves the same objective as sklearn: same predictions, loss no worse."""
    from interpsuite_plugins.probing.batched_logistic import fit_logistic
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(n_classes)
    layers, n, d = 3, 300, 24
    x = rng.standard_normal((layers, n, d)) * rng.uniform(0.2, 5.0, d)  # badly scaled on purpose
    y = (x[0] @ rng.standard_normal((d, n_classes)) + 3 * rng.standard_normal((n, n_classes))).argmax(1)
    c_grid = [0.01, 1.0, 100.0]
    fit = fit_logistic(
        torch.tensor(x), torch.tensor(np.stack([y] * 3)), n_classes, torch.tensor(c_grid, dtype=torch.float64),
        tol=1e-7,
    )  # fmt: skip
    assert bool(fit.converged.all())
    predictions = fit.predict(torch.tensor(x))
    for layer in range(layers):
        for j, c in enumerate(c_grid):
            reference = LogisticRegression(C=c, max_iter=10000, tol=1e-10).fit(x[layer], y)
            coef = reference.coef_.T  # [d, 1] binary, [d, K] multinomial
            assert np.abs(fit.weights[layer, j].numpy() - coef).max() <= 1e-3 * max(1.0, np.abs(coef).max())
            assert (predictions[layer, j].numpy() == reference.predict(x[layer])).mean() >= 0.99


def test_batched_and_sklearn_probe_layers_agree() -> None:
    x, y, groups, _ = _planted()
    feats = {layer: x + 0.3 * layer * np.random.default_rng(layer).standard_normal(x.shape) for layer in range(3)}
    words = [f"w{i}" for i in np.random.default_rng(1).integers(0, 80, N)]
    batched = probe_layers(feats, y, groups, word_types=words, config=ProbeConfig(solver="batched"))
    reference = probe_layers(feats, y, groups, word_types=words, config=ProbeConfig(solver="sklearn"))
    for a, b in zip(batched.layers, reference.layers, strict=True):
        assert a.accuracy_mean == pytest.approx(b.accuracy_mean, abs=0.01)
        assert a.control_accuracy_mean == pytest.approx(b.control_accuracy_mean, abs=0.03)
        assert _cos(a.direction, b.direction) > 0.99
