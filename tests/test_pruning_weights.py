"""Weight analysis and Wanda's calibration statistic (pruning family, issue 15).

What must hold: every block's linear maps are found on each architecture, read as [out, in] views
of the parameters (GPT-2's Conv1D transposed, its fused c_attn one "attn.qkv" matrix); the
statistics of one matrix equal their definitions on matrices with known answers (diagonal,
orthogonal, rank one, a planted outlier weight and outlier column); the analyzer runs with
defaults on all three tiny models with its own checks passing; the input-feature norms equal the
norms of the captured hook points that are those inputs (mlp.post, attn.z), do not change with
padding, and leave no hook behind even after an error; scores have the parameters' layouts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from interpsuite_plugins.pruning.calibration import input_feature_norms, magnitude_scores, wanda_scores
from interpsuite_plugins.pruning.weight_analysis import WeightAnalyzer
from interpsuite_plugins.pruning.weights import (
    analyze_weights,
    default_edges,
    effective_rank,
    linear_modules,
    matrix_stats,
    power_iteration_norm,
    weight_matrices,
)

from interpsuite.errors import ConfigError
from interpsuite.results import contract_errors, read_results
from interpsuite.testing import run_analyzer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Hi",
    "Numbers like 12, 345 and 6789 appear in many documents, and some of them are long.",
]

#: kinds per block and their [out, in] shapes on each tiny model (d_model 64, 4 heads; Llama: 2 KV
#: heads of 16, d_mlp 128; GPT-2: d_mlp 4 x 64, fused qkv 3 x 64)
EXPECTED = {
    "tiny_llama": [
        ("attn.q", (64, 64)),
        ("attn.k", (32, 64)),
        ("attn.v", (32, 64)),
        ("attn.o", (64, 64)),
        ("mlp.gate", (128, 64)),
        ("mlp.up", (128, 64)),
        ("mlp.down", (64, 128)),
    ],
    "tiny_gpt2": [("attn.qkv", (192, 64)), ("attn.o", (64, 64)), ("mlp.up", (256, 64)), ("mlp.down", (64, 256))],
    "tiny_bert": [
        ("attn.q", (64, 64)),
        ("attn.k", (64, 64)),
        ("attn.v", (64, 64)),
        ("attn.o", (64, 64)),
        ("mlp.up", (128, 64)),
        ("mlp.down", (64, 128)),
    ],
}
MODELS = tuple(EXPECTED)


# --- finding the matrices ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_weight_matrices_are_out_in_views_of_the_named_parameters(tiny_models, name):
    model = tiny_models[name]
    params = dict(model.hf_model.named_parameters())
    matrices = weight_matrices(model)
    per_layer = EXPECTED[name]
    assert [(m.layer, m.kind) for m in matrices] == [(L, k) for L in range(2) for k, _ in per_layer]
    for (layer, kind, param, weight), (_, shape) in zip(matrices, per_layer * 2, strict=True):
        assert tuple(weight.shape) == shape, (layer, kind)
        stored = params[param]
        transposed = name == "tiny_gpt2"  # Conv1D keeps [in, out]
        assert torch.equal(weight, stored.t() if transposed else stored)
        assert weight.data_ptr() == stored.data_ptr()  # a view: nothing copied
        assert f".{layer}." in param


def test_modules_are_chosen_by_kind_or_parameter_name_and_unknown_ones_refused(tiny_models):
    gpt2 = tiny_models["tiny_gpt2"]
    chosen = weight_matrices(gpt2, layers=[1], kinds=["attn.o"])
    assert [(m.layer, m.kind, m.param) for m in chosen] == [(1, "attn.o", "transformer.h.1.attn.c_proj.weight")]
    both = weight_matrices(gpt2, kinds=["attn.o", "transformer.h.0.mlp.c_fc.weight"])
    assert [(m.layer, m.kind) for m in both] == [(0, "attn.o"), (0, "mlp.up"), (1, "attn.o")]
    with pytest.raises(ConfigError, match=r"\['mlp.gate'\] not found on tiny_gpt2; its modules are attn.qkv"):
        weight_matrices(gpt2, kinds=["mlp.gate"])


# --- one matrix: known answers --------------------------------------------------------------------------


def test_spectral_quantities_of_matrices_with_known_spectra():
    diagonal = torch.zeros(3, 5)
    diagonal[0, 0], diagonal[1, 1], diagonal[2, 2] = 3.0, 2.0, 1.0
    stats = matrix_stats(diagonal)
    p = np.array([3.0, 2.0, 1.0]) / 6.0
    assert stats.spectral_norm == pytest.approx(3.0, rel=1e-6)
    assert stats.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert stats.stable_rank == pytest.approx(14.0 / 9.0, rel=1e-6)
    assert stats.frobenius_norm == pytest.approx(math.sqrt(14.0), rel=1e-12)
    assert stats.n_zero == 12 and stats.frac_below == [12 / 15, 12 / 15]

    orthogonal = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)))[0]
    stats = matrix_stats(orthogonal)
    assert stats.effective_rank == pytest.approx(8.0, rel=1e-5)
    assert stats.stable_rank == pytest.approx(8.0, rel=1e-5)

    generator = torch.Generator().manual_seed(1)
    rank_one = torch.outer(torch.randn(20, generator=generator), torch.randn(30, generator=generator))
    stats = matrix_stats(rank_one, spectrum=True, svd_dtype=torch.float64)
    assert stats.effective_rank == pytest.approx(1.0, abs=1e-5)
    assert stats.stable_rank == pytest.approx(1.0, rel=1e-5)
    assert effective_rank(torch.zeros(4, dtype=torch.float64)) == 0.0
    assert power_iteration_norm(diagonal) == pytest.approx(3.0, rel=1e-9)


def test_moments_quantiles_outliers_and_histogram_follow_their_definitions():
    generator = torch.Generator().manual_seed(2)
    w = torch.randn(64, 48, generator=generator) * 0.02
    w[:, 7] *= 20.0  # one loud input feature (column)
    w[3, 5] = 10.0  # one outlier weight, far beyond 6 sigma even with it inflating the std
    w[0, 0] = 0.0
    w[0, 1] = 1e-9  # below the histogram's range: clamped into the first bin
    stats = matrix_stats(w, tolerances=(1e-3, 1e-2), outlier_sigma=6.0, feature_outlier_ratio=5.0)
    absolute = w.abs().flatten().double()
    levels = torch.tensor([0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99], dtype=torch.float64)
    torch.testing.assert_close(
        torch.tensor(stats.quantiles, dtype=torch.float64), torch.quantile(absolute, levels), rtol=1e-6, atol=0
    )
    assert stats.frac_below == [float((w.abs() < 1e-3).double().mean()), float((w.abs() < 1e-2).double().mean())]
    assert stats.mean == pytest.approx(float(w.double().mean()), rel=1e-12)
    assert stats.std == pytest.approx(float(w.double().std(correction=0)), rel=1e-12)
    assert stats.outlier_weights == 1
    assert stats.outlier_features == [5, 7]  # the loud column, and the column holding the 10.0
    assert stats.n_zero == 1
    assert stats.histogram.sum() + stats.n_zero == w.numel()
    assert stats.histogram[0] >= 1  # the 1e-9 weight
    assert stats.histogram[-1] == 1  # log10(10) = 1 is the upper edge: only the outlier weight lands there
    edges = default_edges()
    assert len(edges) == 51 and edges[0] == -6.0 and edges[-1] == 1.0


# --- the whole model --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_analyze_weights_rows_equal_direct_computations(tiny_models, name):
    model = tiny_models[name]
    analysis = analyze_weights(model, tolerances=(1e-3, 1e-2), top_singular_values=5, power_checks=3)
    table = analysis.modules
    assert len(table) == 2 * len(EXPECTED[name])
    assert list(analysis.spectra.groupby("param", sort=False).size()) == [5] * len(table)
    checks = analysis.checks()
    assert set(checks) == {
        "quantiles_monotone",
        "histogram_counts_total",
        "frobenius_equals_sv_norm",
        "spectral_norm_vs_power_iteration",
        "rank_bounds",
    }
    assert [n for n, (value, threshold, _) in checks.items() if not value <= threshold] == []
    assert table["spectral_norm_power"].notna().sum() == 3
    for (_, kind, param, weight), row in zip(weight_matrices(model), table.to_dict("records"), strict=True):
        assert (row["kind"], row["param"]) == (kind, param)
        w = weight.detach().double()
        assert row["spectral_norm"] == pytest.approx(float(torch.linalg.matrix_norm(w, ord=2)), rel=1e-5)
        assert row["frobenius_norm"] == pytest.approx(float(torch.linalg.matrix_norm(w)), rel=1e-12)
        assert row["stable_rank"] == pytest.approx(row["frobenius_norm"] ** 2 / row["spectral_norm"] ** 2, rel=1e-12)
        assert row["frac_below_0.01"] == float((weight.abs() < 1e-2).double().mean())
        hist = analysis.histograms[analysis.histograms["param"] == param]
        assert int(hist["count"].sum()) == row["numel"] - row["n_zero"]


@pytest.mark.parametrize("name", MODELS)
def test_weight_analysis_analyzer_with_defaults(tiny_models, name, tmp_path):
    result = run_analyzer(WeightAnalyzer, tiny_models[name], TEXTS, run_dir=tmp_path, reraise=True)
    assert result.status == "ok", result.error
    assert result.failed_checks == []
    assert {"frobenius_equals_sv_norm", "spectral_norm_vs_power_iteration", "quantiles_monotone"} <= set(result.checks)
    assert set(result.tables) == {"modules", "spectra", "histograms", "activation_outliers"}
    assert set(result.figures) == {"effective_rank", "near_zero", "spectral_norm", "magnitude_histograms", "spectra"}
    assert result.metrics["n_matrices"] == 2 * len(EXPECTED[name])
    assert result.summary["fused_qkv"] is (name == "tiny_gpt2")
    payload = read_results(tmp_path)
    assert contract_errors(payload, tmp_path) == []


def test_weight_analysis_options_select_layers_and_modules(tiny_models):
    options = {"layers": [-1], "modules": ["attn.o", "mlp.down"], "spectrum": False, "tolerances": [0.05]}
    result = run_analyzer(WeightAnalyzer, tiny_models["tiny_llama"], TEXTS, options=options, reraise=True)
    table = result.tables["modules"]
    assert list(zip(table["layer"], table["kind"], strict=True)) == [(1, "attn.o"), (1, "mlp.down")]
    assert "spectra" not in result.tables and "effective_rank" not in result.figures
    assert set(result.checks) == {"quantiles_monotone", "histogram_counts_total"}
    assert "frac_below_0.05" in table


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"modules": ["attn.x"]}, r"weight_analysis.modules: unknown \['attn.x'\]"),
        ({"tolerances": [-1.0]}, r"weight_analysis.tolerances must be positive"),
        ({"layers": [5]}, r"layer 5 out of range"),
        ({"log10_range": [1.0, -6.0]}, r"log10_range must be \[low, high\]"),
        ({"svd_dtype": "float16"}, r"svd_dtype: 'float16' is not one of"),
    ],
)
def test_weight_analysis_refuses_bad_options_before_running(tiny_models, options, message):
    with pytest.raises(ConfigError, match=message):
        run_analyzer(WeightAnalyzer, tiny_models["tiny_llama"], TEXTS, options=options)


def test_a_module_kind_the_architecture_lacks_is_named(tiny_models):
    with pytest.raises(ConfigError, match=r"\['mlp.gate'\] not found on tiny_gpt2"):
        run_analyzer(WeightAnalyzer, tiny_models["tiny_gpt2"], TEXTS, options={"modules": ["mlp.gate"]}, reraise=True)


# --- calibration: Wanda's input-feature norms --------------------------------------------------------------


def _captured_norms(model, texts, batch_size, max_length=64):
    """||x|| over real tokens of the hook points that are the o and down projections' inputs."""
    sums: dict[str, torch.Tensor] = {}
    for batch in model.batches(texts, batch_size, max_length):
        names = [f"blocks.{L}.{site}" for L in range(model.info.n_layers) for site in ("mlp.post", "attn.z")]
        cache = model.forward(batch, capture=names).cache
        mask = batch.attention_mask.bool()
        for name in names:
            value = cache[name]
            value = value.flatten(-2) if name.endswith("attn.z") else value  # [b, pos, head, d] -> [b, pos, h*d]
            squares = value[mask].double().pow(2).sum(0)
            sums[name] = sums[name] + squares if name in sums else squares
    return {name: total.sqrt() for name, total in sums.items()}


@pytest.mark.parametrize("name", MODELS)
def test_input_norms_equal_the_captured_hook_points(tiny_models, name):
    model = tiny_models[name]
    norms = input_feature_norms(model, TEXTS, batch_size=2, max_length=64)
    modules = linear_modules(model)
    assert list(norms) == [m.param for m in modules]
    assert all(norms[m.param].shape == (m.in_features,) and norms[m.param].dtype == torch.float64 for m in modules)
    reference = _captured_norms(model, TEXTS, batch_size=2)
    site = {"attn.o": "attn.z", "mlp.down": "mlp.post"}
    compared = 0
    for m in modules:
        if m.kind in site:
            torch.testing.assert_close(
                norms[m.param], reference[f"blocks.{m.layer}.{site[m.kind]}"], rtol=1e-5, atol=1e-7
            )
            compared += 1
    assert compared == 4


@pytest.mark.parametrize("name", MODELS)
def test_padding_does_not_change_the_norms(tiny_models, name):
    model = tiny_models[name]
    texts = ["Hi", TEXTS[3]]  # the short text is padded by 80 positions when batched with the long one
    alone = input_feature_norms(model, texts, batch_size=1, max_length=64)
    padded = input_feature_norms(model, texts, batch_size=2, max_length=64)
    assert alone.keys() == padded.keys()
    for param in alone:
        torch.testing.assert_close(padded[param], alone[param], rtol=1e-5, atol=1e-7)
    # the test can fail: counting the padded positions changes the norms by far more than the tolerance
    batch = model.tokenize(texts, 64)
    assert int(batch.attention_mask.sum()) < batch.attention_mask.numel()
    down = next(m for m in linear_modules(model) if m.kind == "mlp.down" and m.layer == 0)
    post = model.forward(batch, capture=["blocks.0.mlp.post"]).cache["blocks.0.mlp.post"]
    with_padding = post.reshape(-1, post.shape[-1]).double().pow(2).sum(0).sqrt()
    assert (with_padding - alone[down.param]).abs().max() > 1e-3


def test_calibration_hooks_are_removed_also_after_an_error(tiny_models, monkeypatch):
    model = tiny_models["tiny_llama"]
    modules = [m.module for m in linear_modules(model)]
    before = [len(m._forward_pre_hooks) for m in modules]
    norms = input_feature_norms(model, TEXTS[:2], modules=["mlp.down"])
    assert [len(m._forward_pre_hooks) for m in modules] == before
    assert len(norms) == 2

    def broken(*args, **kwargs):
        raise RuntimeError("forward failed")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="forward failed"):
        input_feature_norms(model, TEXTS[:2])
    assert [len(m._forward_pre_hooks) for m in modules] == before


def test_calibration_refuses_missing_data(tiny_models):
    model = tiny_models["tiny_llama"]
    with pytest.raises(ConfigError, match="no calibration texts"):
        input_feature_norms(model, [])
    with pytest.raises(ConfigError, match="Wanda needs calibration data"):
        wanda_scores(model, {})
    with pytest.raises(ConfigError, match=r"its layer reads 128 input features"):
        wanda_scores(model, {"model.layers.0.mlp.down_proj.weight": torch.ones(64)})


@pytest.mark.parametrize("name", MODELS)
def test_scores_have_the_parameters_layout(tiny_models, name):
    model = tiny_models[name]
    params = dict(model.hf_model.named_parameters())
    magnitude = magnitude_scores(model)
    norms = input_feature_norms(model, TEXTS[:2], max_length=32)
    wanda = wanda_scores(model, norms)
    assert magnitude.keys() == wanda.keys() == norms.keys()
    for m in linear_modules(model):
        weight = params[m.param].detach()
        assert magnitude[m.param].shape == wanda[m.param].shape == weight.shape
        assert torch.equal(magnitude[m.param], weight.abs())
        norm = norms[m.param].float()
        # the norm of input feature i scales every weight reading feature i
        expected = weight.abs() * (norm[:, None] if name == "tiny_gpt2" else norm[None, :])
        torch.testing.assert_close(wanda[m.param], expected, rtol=0, atol=0)
    # with every input feature equally loud, Wanda is magnitude
    flat = {p: torch.ones_like(n) for p, n in norms.items()}
    for param, score in wanda_scores(model, flat).items():
        assert torch.equal(score, magnitude[param])


def test_activation_outliers_are_the_features_far_above_their_module_median(tiny_models):
    """The analyzer's activation columns equal the calibration norms computed directly, and a
    feature is listed exactly when its norm exceeds ratio x its module's median."""
    model = tiny_models["tiny_llama"]
    ratio = 1.5  # low enough that the random tiny model has outliers to list
    result = run_analyzer(WeightAnalyzer, model, TEXTS, options={"activation_outlier_ratio": ratio}, reraise=True)
    norms = input_feature_norms(model, TEXTS, batch_size=8, max_length=128)
    table, listed = result.tables["modules"], result.tables["activation_outliers"]
    assert len(listed) > 0
    for row in table.to_dict("records"):
        relative = norms[row["param"]] / norms[row["param"]].median()
        assert row["act_max_ratio"] == pytest.approx(float(relative.max()), rel=1e-12)
        expected = torch.nonzero(relative > ratio).flatten().tolist()
        assert listed[listed["param"] == row["param"]]["feature"].tolist() == expected
        assert row["act_outlier_features"] == len(expected)
    off = run_analyzer(WeightAnalyzer, model, TEXTS, options={"activation_outlier_ratio": 0}, reraise=True)
    assert "activation_outliers" not in off.tables
