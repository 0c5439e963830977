"""Token attribution: exact properties on hand-built/tiny models, known answers on SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interpsuite_plugins.attribution.methods import (
    AttributionProblem,
    available_methods,
    captum_ig,
    get_method,
    ig_attributions,
)
from interpsuite_plugins.attribution.targets import TargetSpec, resolve_target

from interpsuite import InterpretabilityPipeline
from interpsuite.errors import ConfigError
from interpsuite.plugins import get_registry
from interpsuite.results import contract_errors, read_results

IOI = "When Mary and John went to the store, John gave a drink to"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]


def _problem(model, text, target=None, contrast=None):
    batch = model.tokenize([text])
    ids = batch.input_ids[:, : int(batch.lengths[0])]
    spec = resolve_target(model, ids, target, contrast)
    with torch.no_grad():
        embeds = model.hf_model.get_input_embeddings()(ids).detach().float()
    return AttributionProblem(model, ids, embeds, spec), batch.tokens[0]


class _Linear:
    """Stands in for AttributionProblem: f(e) = sum(w * e) per row, embeds x."""

    def __init__(self, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(1, 5, 3, generator=gen, dtype=torch.float64)
        self.embeds = torch.randn(1, 5, 3, generator=gen, dtype=torch.float64)

    def forward(self, e):
        return (e * self.w).sum(dim=(1, 2))


def test_linear_model_attributions_equal_weights_times_inputs():
    lin = _Linear()
    expected = (lin.w * lin.embeds)[0].sum(-1).numpy()
    out = get_method("grad_x_input")(lin, {})
    np.testing.assert_allclose(out.scores, expected, atol=1e-12)
    attr = ig_attributions(lin.forward, lin.embeds, torch.zeros_like(lin.embeds), n_steps=4)
    np.testing.assert_allclose(attr.numpy(), (lin.w * lin.embeds).numpy(), atol=1e-12)
    sal = get_method("saliency")(lin, {})
    np.testing.assert_allclose(sal.scores, lin.w[0].norm(dim=-1).numpy(), atol=1e-12)


def test_ig_complete_on_tiny_model_and_matches_captum(tiny_models):
    model = tiny_models["tiny_llama"]
    problem, _ = _problem(model, TEXTS[0])
    out = get_method("integrated_gradients")(problem, {"n_steps": 64, "max_steps": 64, "tolerance": 0})
    assert out.info["completeness_error"] < 1e-3
    mine = ig_attributions(
        problem.forward, problem.embeds, problem.baseline("pad_keep_first"), 20, internal_batch_size=7
    )
    theirs, _ = captum_ig(problem, "pad_keep_first", 20)
    assert (mine - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_the_target_reads_only_the_last_logits_and_equals_the_full_forward(tiny_models, name):
    """forward() unembeds the last position only (the target reads nothing else): values and
    gradients equal those from every position's logits."""
    model = tiny_models[name]
    problem, _ = _problem(model, TEXTS[0], target="a", contrast="b")
    x = torch.cat([problem.embeds, problem.baseline("pad")]).requires_grad_(True)
    fast = problem.forward(x)
    (fast_grad,) = torch.autograd.grad(fast.sum(), x)
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    full = model.hf_model(inputs_embeds=x, attention_mask=mask).logits[:, -1]
    spec = problem.spec
    reference = full[:, spec.target_id] - full[:, spec.contrast_id]
    (reference_grad,) = torch.autograd.grad(reference.sum(), x)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast_grad, reference_grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
def test_analyzer_on_tiny_models_follows_contract_and_leaves_no_hooks(tiny_models, name, tmp_path):
    model = tiny_models[name]
    sizes = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules()]
    registry = get_registry()
    methods = available_methods()
    InterpretabilityPipeline(
        model=model,
        data=TEXTS,
        analyzers={"token_attribution": {"methods": methods, "n_samples": 30}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
        registry=registry,
    ).run()
    payload = read_results(tmp_path)
    assert contract_errors(payload, tmp_path) == []
    entry = payload["analyzers"]["token_attribution"]
    assert entry["status"] == "ok", entry["error"]
    assert all(c["passed"] for c in entry["checks"].values()), entry["checks"]
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf_model.modules()] == sizes


def test_explain_prediction_on_tiny_model(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    report = InterpretabilityPipeline(
        model=model,
        data=["<b>bold</b> & co", *TEXTS],
        analyzers={"explain_prediction": {}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
        registry=get_registry(),
    ).run()
    result = report.results["explain_prediction"]
    assert result.status == "ok", result.error
    page = result.artifacts["explain_prediction.html"]
    assert "&lt;b&gt;" in page and "<b>bold" not in page and "http" not in page
    entry = result.summary["texts"][0]
    assert len(entry["predictions"]) == 5 and "top prediction" in entry["explanation"]
    assert not result.failed_checks


def test_bad_inputs_are_clear(smollm2, tiny_models):
    from interpsuite_plugins.attribution.token_attribution import TokenAttribution, TokenAttributionConfig

    ids = smollm2.tokenize([IOI]).input_ids
    with pytest.raises(ConfigError, match="pieces"):
        resolve_target(smollm2, ids, " Mariposa-xyz")
    spec = resolve_target(smollm2, ids, " Mariposa-xyz", allow_first_piece=True)
    assert "first piece" in spec.note
    with pytest.raises(ConfigError, match="empty"):
        resolve_target(smollm2, ids, "")
    with pytest.raises(ConfigError, match="available"):
        TokenAttribution().validate(smollm2.info, TokenAttributionConfig(methods=["saliency", "nope"]))
    with pytest.raises(ConfigError, match="encoder"):
        TokenAttribution().validate(tiny_models["tiny_bert"].info, TokenAttributionConfig(target=" a"))


def test_smollm2_ioi_known_answers(smollm2):
    problem, tokens = _problem(smollm2, IOI, " Mary")
    assert problem.spec == TargetSpec("logit", target_id=smollm2.to_single_token(" Mary"), label="logit of ' Mary'")
    ig = get_method("integrated_gradients")(problem, {})
    assert ig.info["passed"] and ig.info["completeness_error"] < 0.05
    assert ig.info["steps"] <= 800
    # the answer is copied from the " Mary" input token: the gradient methods agree on its sign
    mary = tokens.index(" Mary")
    for name in ("grad_x_input", "integrated_gradients", "occlusion"):
        scores = ig.scores if name == "integrated_gradients" else get_method(name)(problem, {}).scores
        assert scores[mary] > 0, (name, scores)
