"""Importance criteria and `prune` (plugins/pruning/criteria.py).

What must hold: activation scores (and the active fraction behind dead neurons) equal a direct
capture over the real tokens; taylor scores equal a hand-written autograd reference that hooks the
raw torch modules and computes the mean next-token NLL itself; ablation scores from the ONE batched
sweep equal one plain forward per unit (<= 1e-5), unmeasured units are NaN and never pruned; scores
do not depend on batch_size; `prune` removes exactly round(sparsity x N) per layer, the lowest
scores; every bad input is one ConfigError line, raised before any forward pass.
"""

from __future__ import annotations

import pytest
import torch
from interpsuite_plugins.mechanistic.head_ablation import token_nll
from interpsuite_plugins.pruning.calibration import input_feature_norms, magnitude_scores, wanda_scores
from interpsuite_plugins.pruning.criteria import CRITERIA, Scores, importance_scores, prune
from interpsuite_plugins.pruning.masks import masked
from interpsuite_plugins.pruning.plan import PruningPlan, plan_from_scores
from torch.nn import functional

from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pruning removes weights.",
    "1 2 3",
    "When Mary and John went to the store, John gave a drink to",
]
CAUSAL = ("tiny_llama", "tiny_gpt2")


def real_mean_loss(model, batch, interventions=()) -> float:
    """Mean next-token NLL over all real tokens of one plain forward pass (float64)."""
    with torch.no_grad():
        out = model.forward(batch, interventions=interventions).output
    nll, count = token_nll(out, batch)
    return float(nll.double().sum() / count.double().sum())


# --- activation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
def test_activation_equals_a_direct_capture(tiny_models, name):
    model = tiny_models[name]
    scores = importance_scores(model, "activation", "neurons", TEXTS, batch_size=3)  # 2 batches, padded
    batch = model.tokenize(TEXTS)
    layers = range(model.info.n_layers)
    cache = model.forward(batch, capture=[f"blocks.{L}.mlp.post" for L in layers]).cache
    real = batch.attention_mask.bool()
    assert scores.n_tokens == int(real.sum())
    assert sorted(scores.values) == list(layers)
    for layer in layers:
        acts = cache[f"blocks.{layer}.mlp.post"][real].double().abs()  # [n_real, d_mlp]
        assert scores.values[layer].shape == (model.info.d_mlp,)
        torch.testing.assert_close(scores.values[layer], acts.mean(0), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(scores.active_fraction[layer], (acts > 1e-6).double().mean(0), rtol=0, atol=1e-12)
    table = scores.table()
    assert list(table.columns) == ["layer", "unit", "score", "active_fraction"]
    assert len(table) == model.info.n_layers * model.info.d_mlp


def test_a_pruned_neuron_is_reported_dead(tiny_models):
    model = tiny_models["tiny_llama"]
    assert importance_scores(model, "activation", "neurons", TEXTS).dead().empty  # random weights: none dead
    with masked(model, PruningPlan.for_units(model, "neurons", {1: [5, 77]})):
        scores = importance_scores(model, "activation", "neurons", TEXTS)
    dead = scores.dead()
    assert list(zip(dead["layer"], dead["unit"], strict=True)) == [(1, 5), (1, 77)]
    assert (dead["score"] == 0).all()


# --- taylor ----------------------------------------------------------------------------------------


def autograd_reference(model, granularity: str, texts: list[str]) -> dict[int, torch.Tensor]:
    """|sum over real tokens of act x dLoss/dact| with raw torch hooks on the projections that read
    mlp.post / attn.z and the loss written out here: mean next-token cross-entropy over real tokens."""
    info, adapter = model.info, model.adapter
    modules = {
        layer: adapter.mlp_output_projection(layer)
        if granularity == "neurons"
        else adapter.attention_output_projection(layer)
        for layer in range(info.n_layers)
    }
    inputs: dict[int, torch.Tensor] = {}

    def keeper(layer):
        def hook(module, args):
            inputs[layer] = args[0]

        return hook

    handles = [module.register_forward_pre_hook(keeper(layer)) for layer, module in modules.items()]
    batch = model.tokenize(texts)
    try:
        with torch.enable_grad():
            logits = model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            mask = batch.attention_mask[:, 1:].bool()
            loss = functional.cross_entropy(logits[:, :-1][mask].double(), batch.input_ids[:, 1:][mask])
            layers = sorted(inputs)
            grads = torch.autograd.grad(loss, [inputs[layer] for layer in layers])
    finally:
        for handle in handles:
            handle.remove()
    real = batch.attention_mask.bool()
    out = {}
    for layer, grad in zip(layers, grads, strict=True):
        prod = (inputs[layer].detach().double() * grad.double())[real].sum(0)  # [d_mlp] or [H * d_head]
        if granularity == "heads":
            prod = prod.view(info.n_heads, info.d_head).sum(1)
        out[layer] = prod.abs()
    return out


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("granularity", ["neurons", "heads"])
def test_taylor_equals_an_autograd_reference(tiny_models, name, granularity):
    model = tiny_models[name]
    for parameter in model.hf_model.parameters():  # the shared tiny model may carry another test's grads
        parameter.grad = None
    scores = importance_scores(model, "taylor", granularity, TEXTS, batch_size=3)
    assert all(p.grad is None for p in model.hf_model.parameters())  # no gradients left on the model
    reference = autograd_reference(model, granularity, TEXTS)
    n = model.info.d_mlp if granularity == "neurons" else model.info.n_heads
    assert scores.n_tokens == int(model.tokenize(TEXTS).attention_mask[:, 1:].sum())
    for layer, expected in reference.items():
        assert scores.values[layer].shape == (n,)
        assert (scores.values[layer] >= 0).all()
        torch.testing.assert_close(scores.values[layer].double(), expected, rtol=1e-4, atol=1e-8)


# --- ablation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAUSAL)
def test_head_ablation_equals_one_forward_per_head(tiny_models, name):
    model = tiny_models[name]
    scores = importance_scores(model, "ablation", "heads", TEXTS, sweep_batch=8)
    batch = model.tokenize(TEXTS)
    clean = real_mean_loss(model, batch)
    assert scores.baseline_loss == pytest.approx(clean, abs=1e-5)
    for layer in range(model.info.n_layers):
        for head in range(model.info.n_heads):
            ablated = real_mean_loss(model, batch, [Intervention(f"blocks.{layer}.attn.z", "zero", heads=[head])])
            assert abs(float(scores.values[layer][head]) - (ablated - clean)) <= 1e-5, (layer, head)


@pytest.mark.parametrize("name", CAUSAL)
def test_neuron_ablation_measures_only_the_given_units(tiny_models, name):
    model = tiny_models[name]
    units = {0: [0, 5, 17, 100], 1: [3, 127]}
    scores = importance_scores(model, "ablation", "neurons", TEXTS, units=units, batch_size=3)  # two sweeps
    batch = model.tokenize(TEXTS)
    clean = real_mean_loss(model, batch)
    for layer, ids in units.items():
        measured = (~scores.values[layer].isnan()).nonzero().flatten().tolist()
        assert measured == ids
        for unit in ids:
            ablated = real_mean_loss(model, batch, [Intervention(f"blocks.{layer}.mlp.post", "zero", units=[unit])])
            assert abs(float(scores.values[layer][unit]) - (ablated - clean)) <= 1e-5, (layer, unit)
    pairs = importance_scores(model, "ablation", "neurons", TEXTS, units=[(0, 5), (1, 3)], layers=[0, 1])
    assert float(pairs.values[0][5]) == pytest.approx(float(scores.values[0][5]), abs=1e-6)


def test_unmeasured_units_are_never_pruned(tiny_models):
    model = tiny_models["tiny_llama"]
    units = {layer: list(range(0, 120, 12)) for layer in range(2)}  # 10 measured per layer of 128
    scores = importance_scores(model, "ablation", "neurons", TEXTS, units=units)
    plan = scores.plan(model, 0.05)  # round(6.4) = 6 per layer
    for layer, ids in units.items():
        measured = scores.values[layer][ids]
        lowest = [ids[i] for i in torch.argsort(measured)[:6].tolist()]
        assert plan.units[layer] == sorted(lowest)
    with pytest.raises(ConfigError, match="measured only 10"):
        scores.plan(model, 0.1)  # 13 per layer > 10 measured
    table = scores.table()
    assert table["score"].isna().sum() == 2 * (128 - 10)


# --- batch size and prune ----------------------------------------------------------------------------


@pytest.mark.parametrize(("criterion", "granularity"), [("wanda", "unstructured"), ("taylor", "neurons")])
def test_scores_do_not_depend_on_batch_size(tiny_models, criterion, granularity):
    model = tiny_models["tiny_llama"]
    one = importance_scores(model, criterion, granularity, TEXTS, batch_size=1)
    four = importance_scores(model, criterion, granularity, TEXTS, batch_size=4)
    assert one.values.keys() == four.values.keys()
    for key in one.values:
        torch.testing.assert_close(one.values[key].double(), four.values[key].double(), rtol=1e-4, atol=1e-8)


def test_unstructured_scores_are_the_calibration_engines(tiny_models):
    model = tiny_models["tiny_gpt2"]
    magnitude = importance_scores(model, "magnitude", "unstructured")
    expected = magnitude_scores(model)
    assert magnitude.values.keys() == expected.keys()
    assert all(torch.equal(magnitude.values[k], expected[k]) for k in expected)
    wanda = importance_scores(model, "wanda", "unstructured", TEXTS, layers=[1])
    reference = wanda_scores(model, input_feature_norms(model, TEXTS, layers=[1]))
    assert wanda.values.keys() == reference.keys() and all(".1." in k for k in reference)
    assert all(torch.equal(wanda.values[k], reference[k]) for k in reference)


@pytest.mark.parametrize(
    ("criterion", "granularity", "sparsity", "per_layer"),
    [("activation", "neurons", 0.25, 32), ("taylor", "neurons", 0.1, 13), ("ablation", "heads", 0.5, 2)],
)
def test_prune_removes_exact_counts_of_the_lowest(tiny_models, criterion, granularity, sparsity, per_layer):
    model = tiny_models["tiny_llama"]
    plan = prune(model, criterion, sparsity, granularity, TEXTS)
    assert (plan.granularity, plan.criterion, plan.sparsity) == (granularity, criterion, sparsity)
    assert plan.counts() == {0: per_layer, 1: per_layer}
    scores = importance_scores(model, criterion, granularity, TEXTS)
    for layer, ids in plan.units.items():
        kept = sorted(set(range(scores.values[layer].numel())) - set(ids))
        assert float(scores.values[layer][ids].max()) <= float(scores.values[layer][kept].min())


def test_prune_global_and_unstructured(tiny_models):
    model = tiny_models["tiny_llama"]
    plan = prune(model, "ablation", 0.5, "heads", TEXTS, scope="global")
    assert sum(plan.counts().values()) == 4
    unstructured = prune(model, "magnitude", 0.5)
    expected = plan_from_scores(model, magnitude_scores(model), 0.5, "unstructured", "magnitude")
    assert unstructured.masks.keys() == expected.masks.keys()
    assert all(torch.equal(unstructured.masks[k], expected.masks[k]) for k in expected.masks)
    assert max(unstructured.row_errors().values()) <= 0.5
    layer_only = prune(model, "activation", 0.5, "neurons", TEXTS, layers=[1])
    assert layer_only.counts() == {0: 0, 1: 64}


# --- bad input -------------------------------------------------------------------------------------


def _no_pass(*args, **kwargs):
    raise AssertionError("a forward pass ran before the input was checked")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda m: importance_scores(m, "wanda", "unstructured"),
            "'wanda' needs calibration text; give texts",
        ),
        (lambda m: importance_scores(m, "wanda", "unstructured", []), "needs calibration text"),
        (lambda m: importance_scores(m, "activation", "neurons", None), "needs calibration text"),
        (lambda m: prune(m, "taylor", 0.5, "heads", []), "needs calibration text"),
        (lambda m: importance_scores(m, "activation", "heads", TEXTS), "valid pairs are unstructured: magnitude"),
        (lambda m: importance_scores(m, "magnitude", "neurons"), "does not score neurons"),
        (lambda m: importance_scores(m, "taylor", "layers", TEXTS), "unknown granularity"),
        (lambda m: importance_scores(m, "activation", "neurons", TEXTS, layers=[2]), "out of range"),
        (lambda m: importance_scores(m, "activation", "neurons", TEXTS, units={0: [1]}), "ablation criterion only"),
        (lambda m: importance_scores(m, "ablation", "neurons", TEXTS, units={0: [128]}), r"outside \[0, 128\)"),
        (lambda m: importance_scores(m, "ablation", "heads", TEXTS, units=[(0, 1), (0, 1)]), "twice"),
        (lambda m: importance_scores(m, "ablation", "heads", TEXTS, units={}), "units is empty"),
        (lambda m: importance_scores(m, "ablation", "heads", TEXTS, units={1: [0]}, layers=[0]), "scored layers"),
        (lambda m: importance_scores(m, "taylor", "neurons", ["a", "b"], max_length=1), "single token"),
        (lambda m: importance_scores(m, "activation", "neurons", TEXTS, batch_size=0), "batch_size"),
        (lambda m: importance_scores(m, "ablation", "heads", TEXTS, sweep_batch=0), "sweep_batch"),
        (lambda m: importance_scores(m, "activation", "neurons", [3]), "texts must be strings"),
        (lambda m: prune(m, "activation", 1.0, "neurons", TEXTS), "sparsity"),
        (lambda m: prune(m, "activation", 0.5, "neurons", TEXTS, scope="per_row"), "per_row"),
        (lambda m: prune(m, "activation", 0.5, "neurons", TEXTS, scope="rows"), "unknown scope"),
        (lambda m: prune(m, "activation", 0.5, "neurons", TEXTS, sweeps=2), "unknown options"),
    ],
)
def test_bad_input_is_one_line_before_any_pass(tiny_models, monkeypatch, call, match):
    model = tiny_models["tiny_llama"]
    monkeypatch.setattr(model.hf_model, "forward", _no_pass)
    with pytest.raises(ConfigError, match=match) as err:
        call(model)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("criterion", "granularity"), [("taylor", "neurons"), ("ablation", "heads")])
def test_encoders_refuse_loss_criteria_but_score_the_rest(tiny_models, criterion, granularity):
    model = tiny_models["tiny_bert"]
    with pytest.raises(ConfigError, match="needs a causal LM") as err:
        importance_scores(model, criterion, granularity, TEXTS)
    assert "\n" not in str(err.value)
    assert prune(model, "activation", 0.25, "neurons", TEXTS).counts() == dict.fromkeys(range(model.info.n_layers), 32)
    wanda = importance_scores(model, "wanda", "unstructured", TEXTS)
    assert wanda.values and all(torch.isfinite(v).all() for v in wanda.values.values())


def test_unstructured_scores_have_no_table(tiny_models):
    scores = importance_scores(tiny_models["tiny_llama"], "magnitude", "unstructured")
    assert isinstance(scores, Scores) and set(CRITERIA) == {"unstructured", "neurons", "heads"}
    with pytest.raises(ConfigError, match="use .values"):
        scores.table()
    with pytest.raises(ConfigError, match="activation"):
        scores.dead()
