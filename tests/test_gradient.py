"""Gradient family: exact properties on tiny random models, a known-answer run on SmolLM2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from interpsuite_plugins.gradient.flow import AttentionGradients, GradientFlow
from interpsuite_plugins.gradient.neurons import NeuronImportance, ablation_effects, grad_x_act, spearman
from interpsuite_plugins.gradient.target import forward_target, gradients, resolve_target

from interpsuite.analyzer import RunContext, build_config
from interpsuite.data import Inputs
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]
IOI = "When Mary and John went to the store, John gave a drink to"


def run(cls, model, texts=TEXTS, **options):
    analyzer = cls(build_config(cls, options))
    analyzer.validate(model.info, analyzer.cfg)
    ctx = RunContext(model=model, inputs=Inputs(list(texts), "test"), show_progress=False)
    return analyzer.run(ctx)


def test_registry_lists_the_family():
    import interpsuite_plugins.gradient as family

    from interpsuite.plugins import get_registry

    registry = get_registry()
    if "gradient_flow" not in registry.analyzers:  # the entry point is not installed: register in-process
        registry = get_registry(extra_plugins=[family])
    for name in ("gradient_flow", "attention_gradients", "neuron_importance"):
        assert registry.analyzers[name].obj.family == "gradient"


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_gradient_flow_equals_direct_autograd(tiny_models, name):
    """resid_pre gradient norms = a plain backward through hf_model with output_hidden_states + retain_grad."""
    model = tiny_models[name]
    result = run(GradientFlow, model)
    assert result.checks["resid_post_equals_next_resid_pre_rel_err"].value <= 1e-5
    batch = model.tokenize(TEXTS)
    with torch.enable_grad():
        out = model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        hidden = out.hidden_states[: model.info.n_layers]  # the last entry is after the final norm
        for h in hidden:
            h.retain_grad()
        rows = torch.arange(batch.size)
        last = out.logits[rows, batch.last_index]
        last.gather(1, last.detach().argmax(-1, keepdim=True)).sum().backward()
    mask = batch.attention_mask.bool()
    table = result.tables["gradient_norms"]
    for layer, h in enumerate(hidden):
        direct = float(h.grad.double().norm(dim=-1)[mask].mean())
        ours = float(table[(table.layer == layer) & (table.hook_point == "resid_pre")].mean_grad_norm.iloc[0])
        assert ours == pytest.approx(direct, rel=1e-5)


def test_resid_post_gradient_is_next_resid_pre_gradient(tiny_models):
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(TEXTS)
    spec = resolve_target(model, None, None)
    names = ["blocks.0.resid_post", "blocks.1.resid_pre"]
    values, _, cache = forward_target(model, spec, batch, names)
    post, pre = gradients(values, [cache[n] for n in names], names)
    assert post.abs().max() > 0
    assert torch.equal(post, pre)
    assert model.hooks_left() == 0


def test_attention_gradients_table_and_checks(tiny_model):
    result = run(AttentionGradients, tiny_model)
    table = result.tables["head_importance"]
    assert len(table) == tiny_model.info.n_layers * tiny_model.info.n_heads
    assert (table.score >= table.signed.abs() - 1e-12).all()  # |sum| <= sum of |.|
    assert result.failed_checks == [], result.checks
    assert result.checks["signed_total_vs_finite_difference_rel_err"].value < 0.05


def test_sweep_ablation_effects_equal_one_at_a_time_forwards(tiny_models):
    model = tiny_models["tiny_llama"]
    batch = model.tokenize(TEXTS)
    spec = resolve_target(model, None, None)
    values, ids, _ = forward_target(model, spec, batch, [])
    neurons = [(0, 3), (1, 7), (1, 100)]
    effects = ablation_effects(model, spec, batch, ids, values.detach(), neurons, batch_size=4)
    rows = torch.arange(batch.size)
    for i, (layer, unit) in enumerate(neurons):
        iv = Intervention(f"blocks.{layer}.mlp.post", "zero", units=[unit])
        logits = model.forward(batch, interventions=[iv]).output
        ablated = logits[rows, batch.last_index].gather(1, ids[:, None]).squeeze(1)
        torch.testing.assert_close(effects[i].float(), (ablated - values.detach()).float(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(effects[-1].float(), values.detach().float(), atol=1e-5, rtol=1e-5)


def test_grad_x_act_is_exact_for_a_linear_function():
    torch.manual_seed(0)
    acts = torch.randn(2, 5, 7)
    weights = torch.randn(7)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    x = acts.clone().requires_grad_(True)
    f = (x * weights * mask[:, :, None]).sum(dim=(1, 2))  # linear in every neuron
    (grad,) = torch.autograd.grad(f.sum(), [x])
    attr = grad_x_act(x, grad, mask)
    for unit in range(7):
        ablated = acts.clone()
        ablated[..., unit] = 0
        real = (ablated * weights * mask[:, :, None]).sum(dim=(1, 2)) - f.detach()
        torch.testing.assert_close(-attr[:, unit].float(), real, atol=1e-5, rtol=1e-5)


def test_grad_x_act_equals_the_scaling_derivative(tiny_models):
    """attr_u = d target(alpha * act_u) / d alpha at 1: a central difference of scaled activations."""
    model = tiny_models["tiny_gpt2"]
    batch = model.tokenize(TEXTS)
    spec = resolve_target(model, None, None)
    values, ids, cache = forward_target(model, spec, batch, ["blocks.1.mlp.post"])
    (grad,) = gradients(values, [cache["blocks.1.mlp.post"]], ["blocks.1.mlp.post"])
    attr = grad_x_act(cache["blocks.1.mlp.post"], grad, batch.attention_mask)
    unit = int(attr.abs().sum(0).argmax())
    eps = 1e-2
    logit = []
    for factor in (1 + eps, 1 - eps):
        iv = Intervention("blocks.1.mlp.post", "scale", factor=factor, units=[unit])
        out = model.forward(batch, interventions=[iv]).output
        logit.append(out[torch.arange(batch.size), batch.last_index].gather(1, ids[:, None]).squeeze(1).double())
    fd = (logit[0] - logit[1]) / (2 * eps)
    torch.testing.assert_close(fd, attr[:, unit], atol=2e-4, rtol=1e-2)


def test_neuron_importance_on_tiny_models(tiny_model):
    result = run(NeuronImportance, tiny_model, n_check=5, top_n=10)
    assert result.failed_checks == [], result.checks
    assert len(result.tables["top_neurons"]) == 10
    assert result.tables["top_neurons"].mean_abs_attr.is_monotonic_decreasing
    assert len(result.tables["ablation_check"]) == 5
    assert np.isfinite(result.metrics["spearman_estimated_vs_real"])


def test_spearman():
    assert spearman(np.array([1.0, 2, 3]), np.array([10.0, 20, 40])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.array([1.0, 1, 1]), np.array([1.0, 2, 3])))


def test_bad_targets(tiny_models, smollm2):
    bert = tiny_models["tiny_bert"]
    with pytest.raises(ConfigError, match="encoder"):
        GradientFlow.validate(GradientFlow(), bert.info, GradientFlow.Config(target=" Mary"))
    with pytest.raises(ConfigError, match="needs a target"):
        NeuronImportance.validate(NeuronImportance(), smollm2.info, NeuronImportance.Config(contrast=" John"))
    with pytest.raises(ConfigError, match="pieces"):
        resolve_target(smollm2, " Supercalifragilistic", None)


def test_neuron_importance_ioi_smollm2(smollm2):
    result = run(NeuronImportance, smollm2, texts=[IOI], target=" Mary", layers=[-4, -3, -2, -1], n_check=10)
    assert result.failed_checks == [], result.checks
    checked = result.tables["ablation_check"]
    top = checked.iloc[0]
    assert np.sign(top.estimated_effect) == np.sign(top.real_effect)
    assert np.isfinite(result.metrics["spearman_estimated_vs_real"])
