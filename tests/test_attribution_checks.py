"""token_attribution's finite-difference checks of its gradient methods: present, passing on real
gradients, and failing on wrong ones (a check that cannot fail verifies nothing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interpsuite_plugins.attribution import methods
from interpsuite_plugins.attribution.token_attribution import (
    FD_MAX_POSITIONS,
    FD_THRESHOLD,
    _fd_positions,
    finite_difference_errors,
)

from interpsuite import InterpretabilityPipeline
from interpsuite.plugins import get_registry

TEXTS = ["When Mary and John went to the store, John gave a drink to", "The capital of France is"]
GRADIENT_METHODS = ["saliency", "grad_x_input"]


def _run(model, tmp_path, methods_=GRADIENT_METHODS, **options):
    report = InterpretabilityPipeline(
        model=model,
        data=TEXTS,
        analyzers={"token_attribution": {"methods": methods_, "max_texts": 2, **options}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
        registry=get_registry(),
    ).run()
    result = report.results["token_attribution"]
    assert result.status == "ok", result.error
    return result


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_gradient_methods_agree_with_finite_differences(tiny_models, name, tmp_path):
    result = _run(tiny_models[name], tmp_path)
    expected = {f"{m}_fd.text{t}" for m in GRADIENT_METHODS for t in range(2)}
    assert expected <= set(result.checks), sorted(result.checks)
    for key in expected:
        check = result.checks[key]
        assert check.threshold == FD_THRESHOLD
        assert check.passed and 0 < check.value < FD_THRESHOLD / 2, (key, check)  # measured <= 3e-3
    assert result.summary["texts"][0]["saliency_fd_error"] == result.checks["saliency_fd.text0"].value


def test_checks_only_for_the_methods_that_ran(tiny_models, tmp_path):
    result = _run(tiny_models["tiny_llama"], tmp_path, ["grad_x_input"])
    assert sorted(result.checks) == ["grad_x_input_fd.text0", "grad_x_input_fd.text1"]


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_a_gradient_twice_too_large_fails_the_saliency_check(tiny_models, name, tmp_path, monkeypatch):
    from captum.attr import Saliency

    real = Saliency.attribute
    monkeypatch.setattr(Saliency, "attribute", lambda self, *a, **k: 2 * real(self, *a, **k))
    result = _run(tiny_models[name], tmp_path)
    for t in range(2):
        check = result.checks[f"saliency_fd.text{t}"]
        assert not check.passed and check.value == pytest.approx(1.0, abs=0.05), check
        assert result.checks[f"grad_x_input_fd.text{t}"].passed  # the other method is untouched
    assert "saliency_fd.text0" in result.failed_checks


def test_scores_at_the_wrong_positions_fail_the_grad_x_input_check(tiny_models, tmp_path, monkeypatch):
    real = methods.get_method("grad_x_input")

    def shifted(problem, options):  # the right numbers, one position off
        out = real(problem, options)
        return methods.MethodOutput(np.roll(out.scores, 1), out.info)

    monkeypatch.setitem(methods._METHODS, "grad_x_input", shifted)
    result = _run(tiny_models["tiny_llama"], tmp_path)
    assert not result.checks["grad_x_input_fd.text0"].passed
    assert result.checks["grad_x_input_fd.text0"].value > 10 * FD_THRESHOLD
    assert result.checks["saliency_fd.text0"].passed


class _Quadratic:
    """Stands in for AttributionProblem: f(e) = sum(w * e) + 0.5 sum(e^2) per row (float64)."""

    def __init__(self, n_tokens=5, d=4):
        gen = torch.Generator().manual_seed(0)
        self.w = torch.randn(1, n_tokens, d, generator=gen, dtype=torch.float64)
        self.embeds = torch.randn(1, n_tokens, d, generator=gen, dtype=torch.float64)
        self.n_tokens = n_tokens

    def forward(self, e):
        return (e * self.w).sum(dim=(1, 2)) + 0.5 * (e * e).sum(dim=(1, 2))


def test_errors_are_exact_on_a_known_function():
    q = _Quadratic()
    grad = (q.w + q.embeds)[0]  # d f / d e
    scores = {"saliency": grad.norm(dim=-1).numpy(), "grad_x_input": (grad * q.embeds[0]).sum(-1).numpy()}
    errors = finite_difference_errors(q, scores)
    assert set(errors) == set(GRADIENT_METHODS)
    assert max(errors.values()) < 1e-9, errors
    wrong = {k: v * 1.1 for k, v in scores.items()}
    assert all(e == pytest.approx(0.1, rel=1e-6) for e in finite_difference_errors(q, wrong).values())
    assert finite_difference_errors(q, {"occlusion": scores["grad_x_input"]}) == {}


def test_long_texts_check_a_capped_evenly_spread_set_of_positions():
    assert _fd_positions(5) == [0, 1, 2, 3, 4]
    picked = _fd_positions(500)
    assert len(picked) == FD_MAX_POSITIONS and picked[0] == 0 and picked[-1] == 499
    assert max(np.diff(picked)) <= 500 // (FD_MAX_POSITIONS - 1) + 1


@pytest.mark.slow
def test_smollm2_quickstart_checks_pass(smollm2, tmp_path):
    result = _run(smollm2, tmp_path)
    values = {k: c.value for k, c in result.checks.items()}
    assert len(values) == 4 and all(c.passed for c in result.checks.values()), values
    assert max(values.values()) < FD_THRESHOLD / 5, values  # measured <= 7e-4 on these texts


def test_half_precision_models_are_attributed_in_float32_inputs(tmp_path):
    from interpsuite import InterpretabilityPipeline, load_model

    report = InterpretabilityPipeline(
        model=load_model("tiny_llama", dtype="bfloat16"),
        data=["ab ab a"],
        analyzers={"token_attribution": {"methods": ["saliency", "integrated_gradients"]}},
        sinks=["rundir"],
        output_dir=tmp_path,
        progress=False,
    ).run()
    entry = report.payload["analyzers"]["token_attribution"]
    assert entry["status"] == "ok", entry["error"]
    assert "ig_completeness.text0" in entry["checks"]  # finite differences are skipped in bf16, IG is not
    assert not any(name.startswith("saliency_fd") for name in entry["checks"])
