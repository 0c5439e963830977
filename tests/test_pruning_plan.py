"""PruningPlan, plan_from_scores and masked application (plugins/pruning plan.py, masks.py).

What must hold: plans prune exactly the lowest scores in their comparison group (per output
row, per weight, globally; per layer or globally for neurons and heads) so the achieved
sparsity is exact within one element per row; applying a plan equals the hook-level ablation
of the same units (<= 1e-5) on every tiny architecture, and afterwards every parameter is
bit-identical, also after an exception; nested application is refused; a saved plan reloads
equal and refuses another model; every bad input is one ConfigError line.
"""

from __future__ import annotations

import math

import pytest
import torch
from interpsuite_plugins.pruning.masks import active_plan, masked
from interpsuite_plugins.pruning.plan import PruningPlan, plan_from_scores

from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import load_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pruning removes weights.", "1 2 3"]
TINY = ("tiny_llama", "tiny_gpt2", "tiny_bert")


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.hf_model.named_parameters()}


def assert_bit_identical(model, before: dict[str, torch.Tensor]) -> None:
    after = dict(model.hf_model.named_parameters())
    assert set(after) == set(before)
    for name, value in before.items():
        assert torch.equal(after[name].detach().view(torch.int32), value.view(torch.int32)), name


def linear_weights(model) -> dict[str, torch.Tensor]:
    """2-D weights of the blocks' projections (not embeddings): what Wanda and magnitude prune."""
    return {
        name: p.detach()
        for name, p in model.hf_model.named_parameters()
        if p.dim() == 2 and name.endswith("weight") and "embed" not in name and "wte" not in name and "wpe" not in name
    }


def magnitude(model) -> dict[str, torch.Tensor]:
    return {name: w.abs() for name, w in linear_weights(model).items()}


def real_outputs(model, batch, interventions=()):
    out = model.forward(batch, interventions=interventions).output
    return out[batch.attention_mask.bool()]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, float("nan"), True, "0.5"])
def test_sparsity_outside_unit_interval_is_refused(tiny_models, sparsity):
    model = tiny_models["tiny_llama"]
    with pytest.raises(ConfigError, match="sparsity"):
        plan_from_scores(model, magnitude(model), sparsity, "unstructured", "magnitude")
    with pytest.raises(ConfigError, match="sparsity"):
        PruningPlan("neurons", "x", sparsity, units={0: [1]}, units_per_layer=128, n_layers=2)


def test_bad_scores_and_plans_are_one_line_errors(tiny_models):
    model = tiny_models["tiny_llama"]
    scores = magnitude(model)
    name = "model.layers.0.mlp.gate_proj.weight"  # [128, 64]: its transpose has another shape
    cases = [
        lambda: plan_from_scores(model, {"nope.weight": scores[name]}, 0.5, "unstructured", "m"),
        lambda: plan_from_scores(model, {name: scores[name].t()}, 0.5, "unstructured", "m"),
        lambda: plan_from_scores(model, {name: scores[name] * float("nan")}, 0.5, "unstructured", "m"),
        lambda: plan_from_scores(model, {}, 0.5, "unstructured", "m"),
        lambda: plan_from_scores(model, {5: torch.rand(128)}, 0.5, "neurons", "m"),
        lambda: plan_from_scores(model, {0: torch.rand(7)}, 0.5, "neurons", "m"),
        lambda: plan_from_scores(model, {0: torch.rand(4)}, 0.5, "heads", "m", scope="per_row"),
        lambda: plan_from_scores(model, scores, 0.5, "channels", "m"),
        lambda: PruningPlan("heads", "m", 0.1, units={0: [1, 1]}, units_per_layer=4, n_layers=2),
        lambda: PruningPlan("heads", "m", 0.1, units={0: [4]}, units_per_layer=4, n_layers=2),
        lambda: PruningPlan("heads", "m", 0.1, units={0: [1]}),
        lambda: PruningPlan.for_units(model, "heads", {2: [0]}),
    ]
    for case in cases:
        with pytest.raises(ConfigError) as err:
            case()
        assert "\n" not in str(err.value)
    gpt2 = tiny_models["tiny_gpt2"]
    plan = PruningPlan.for_units(gpt2, "neurons", {0: [1]})  # d_mlp 256: not tiny_llama's 128
    with pytest.raises(ConfigError, match="256"):
        plan.validate_for(model)


# --- plans from scores ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.7])
def test_per_row_plan_prunes_the_lowest_of_each_output_row(tiny_models, name, sparsity):
    model = tiny_models[name]
    scores = magnitude(model)
    plan = plan_from_scores(model, scores, sparsity, "unstructured", "magnitude")
    assert set(plan.masks) == set(scores) and plan.scope == "per_row"
    for param, keep in plan.masks.items():
        assert keep.shape == scores[param].shape and keep.dtype == torch.bool
        module = model.hf_model.get_submodule(param.rpartition(".")[0])
        row_dim = 1 if type(module).__name__ == "Conv1D" else 0  # GPT-2 Conv1D stores [in, out]
        assert plan.row_dims[param] == row_dim
        rows, row_scores = keep.movedim(row_dim, 0), scores[param].movedim(row_dim, 0)
        n_in = rows.shape[1]
        assert ((~rows).sum(dim=1) == round(sparsity * n_in)).all()
        if 0 < sparsity:
            kept_min = torch.where(rows, row_scores, torch.inf).min(dim=1).values
            pruned_max = torch.where(~rows, row_scores, -torch.inf).max(dim=1).values
            assert (pruned_max <= kept_min).all()
    assert max(plan.row_errors().values()) <= 0.5  # the check: within one element per row
    report = plan.achieved_sparsity()
    assert report.total == sum(s.numel() for s in scores.values())
    assert abs(report.overall - sparsity) <= max(1 / s.shape[plan.row_dims[p] ^ 1] for p, s in scores.items())


def test_per_layer_and_global_unstructured_counts_are_exact(tiny_models):
    model = tiny_models["tiny_llama"]
    scores = magnitude(model)
    per_layer = plan_from_scores(model, scores, 0.4, "unstructured", "magnitude", scope="per_layer")
    for keep in per_layer.masks.values():
        assert int((~keep).sum()) == round(0.4 * keep.numel())
    glob = plan_from_scores(model, scores, 0.4, "unstructured", "magnitude", scope="global")
    total = sum(s.numel() for s in scores.values())
    assert glob.achieved_sparsity().pruned == round(0.4 * total)
    kept = torch.cat([scores[p][m] for p, m in glob.masks.items()])
    pruned = torch.cat([scores[p][~m] for p, m in glob.masks.items()])
    assert pruned.max() <= kept.min()
    assert len({round(v, 3) for v in glob.achieved_sparsity().per_module.values()}) > 1  # not uniform


def test_structured_plans_prune_the_lowest_units(tiny_models):
    model = tiny_models["tiny_llama"]
    generator = torch.Generator().manual_seed(0)
    scores = {layer: torch.randperm(128, generator=generator).float() for layer in range(2)}
    plan = plan_from_scores(model, scores, 0.25, "neurons", "activation")
    assert plan.scope == "per_layer" and plan.counts() == {0: 32, 1: 32}
    for layer, ids in plan.units.items():
        assert ids == sorted(torch.argsort(scores[layer])[:32].tolist())
    assert plan.achieved_sparsity().overall == 0.25
    assert plan.achieved_sparsity().per_module == {"blocks.0.mlp": 0.25, "blocks.1.mlp": 0.25}
    scores[1] = scores[1] + 1000.0  # layer 1 is far more important: a global plan prunes layer 0 only
    glob = plan_from_scores(model, scores, 0.25, "neurons", "activation", scope="global")
    assert glob.counts() == {0: 64, 1: 0}
    heads = plan_from_scores(model, {0: torch.tensor([3.0, 1.0, 2.0, 0.5])}, 0.5, "heads", "ablation")
    assert heads.units == {0: [1, 3]} and heads.counts() == {0: 2, 1: 0}
    assert heads.summary()["per_layer"] == {"0": 2, "1": 0}


def test_pruning_every_head_of_a_layer_warns_naming_the_layer(tiny_models):
    model = tiny_models["tiny_gpt2"]
    with pytest.warns(UserWarning, match="layer 1"):
        plan = plan_from_scores(model, {1: torch.rand(4)}, 0.9, "heads", "ablation")  # round(3.6) = 4
    assert plan.units == {1: [0, 1, 2, 3]}


# --- masked application ---------------------------------------------------------------------


@pytest.mark.parametrize("name", TINY)
def test_masked_neurons_equal_zeroing_mlp_post_and_restore_bit_exactly(tiny_models, name):
    model = tiny_models[name]
    units = {0: [0, 5, 17, 40], 1: [3, 64, 100]}
    plan = PruningPlan.for_units(model, "neurons", units)
    batch = model.tokenize(TEXTS)
    clean = real_outputs(model, batch)
    reference = real_outputs(
        model, batch, [Intervention(f"blocks.{layer}.mlp.post", "zero", units=ids) for layer, ids in units.items()]
    )
    before = snapshot(model)
    with plan.apply(model):
        pruned = real_outputs(model, batch)
        assert active_plan(model) == plan.describe()
    assert (pruned - reference).abs().max() <= 1e-5
    assert (pruned - clean).abs().max() > 1e-4  # the plan changes the model: the comparison can fail
    assert_bit_identical(model, before)
    assert active_plan(model) is None


@pytest.mark.parametrize("name", TINY)
def test_masked_heads_equal_zeroing_attn_z_and_restore_bit_exactly(tiny_models, name):
    model = tiny_models[name]
    units = {0: [1], 1: [0, 3]}
    plan = PruningPlan.for_units(model, "heads", units)
    batch = model.tokenize(TEXTS)
    clean = real_outputs(model, batch)
    reference = real_outputs(
        model, batch, [Intervention(f"blocks.{layer}.attn.z", "zero", heads=ids) for layer, ids in units.items()]
    )
    before = snapshot(model)
    with masked(model, plan):
        pruned = real_outputs(model, batch)
    assert (pruned - reference).abs().max() <= 1e-5
    assert (pruned - clean).abs().max() > 1e-4
    assert_bit_identical(model, before)


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_masked_unstructured_zeroes_exactly_the_mask(tiny_models, name):
    model = tiny_models[name]
    plan = plan_from_scores(model, magnitude(model), 0.5, "unstructured", "magnitude")
    before = snapshot(model)
    parameters = dict(model.hf_model.named_parameters())
    with plan.apply(model):
        for param, keep in plan.masks.items():
            assert torch.equal(parameters[param].detach(), before[param] * keep)
            assert int((parameters[param] == 0).sum()) >= int((~keep).sum())
    assert_bit_identical(model, before)


def test_restored_after_an_exception_and_nesting_refused(tiny_models):
    model = tiny_models["tiny_llama"]
    plan = PruningPlan.for_units(model, "neurons", {0: [1, 2]})
    other = plan_from_scores(model, magnitude(model), 0.5, "unstructured", "magnitude")
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with plan.apply(model):
            raise RuntimeError("boom")
    assert_bit_identical(model, before)
    assert active_plan(model) is None
    with plan.apply(model):
        with pytest.raises(ConfigError, match="already applied"):
            with other.apply(model):
                pass
        with pytest.raises(ConfigError, match="already applied"):
            with plan.apply(model):
                pass
    assert_bit_identical(model, before)
    with other.apply(model):  # usable again once the first block has exited
        pass
    assert_bit_identical(model, before)


# --- serialisation --------------------------------------------------------------------------


def test_plans_save_and_load_equal_and_refuse_another_model(tiny_models, tmp_path):
    model = tiny_models["tiny_gpt2"]
    plan = plan_from_scores(model, magnitude(model), 0.5, "unstructured", "wanda")
    plan.save(tmp_path / "u", model)
    loaded = PruningPlan.load(tmp_path / "u", model)
    assert loaded.to_json() == plan.to_json()
    assert all(torch.equal(loaded.masks[p], plan.masks[p]) for p in plan.masks)
    assert loaded.row_errors() == plan.row_errors()
    heads = PruningPlan.for_units(model, "heads", {1: [2, 0]})
    assert heads.units == {1: [0, 2]}
    heads.save(tmp_path / "h", model)
    assert PruningPlan.load(tmp_path / "h", model).to_json() == heads.to_json()
    assert PruningPlan.from_json(heads.to_json()).units == {1: [0, 2]}
    with pytest.raises(ConfigError, match="fitted on"):
        PruningPlan.load(tmp_path / "h", tiny_models["tiny_llama"])
    with pytest.raises(ConfigError, match="masks"):
        PruningPlan.from_json(plan.to_json())  # the masks live in the safetensors file
    assert math.isclose(plan.summary()["achieved_sparsity"], plan.achieved_sparsity().overall)


@pytest.fixture(scope="module")
def biased():
    """Private tiny GPT-2 and BERT whose biases are random (fresh ones initialise them to 0, which would hide a
    bias left unpruned)."""
    models = {}
    for name in ("tiny_gpt2", "tiny_bert"):
        model = load_model(name)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param, value in model.hf_model.named_parameters():
                if param.endswith("bias"):
                    value.copy_(torch.randn(value.shape, generator=generator) * 0.5)
        models[name] = model
    return models


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_bert"])
def test_pruned_neurons_have_no_activation_even_with_biases(biased, name):
    model = biased[name]
    units = {0: [0, 5, 17], 1: [3, 64]}
    plan = PruningPlan.for_units(model, "neurons", units)
    batch = model.tokenize(TEXTS)
    hooks = [f"blocks.{layer}.mlp.post" for layer in units]
    clean = model.forward(batch, capture=hooks).cache
    assert all((clean[f"blocks.{layer}.mlp.post"][..., ids] != 0).any() for layer, ids in units.items())
    reference = real_outputs(
        model, batch, [Intervention(f"blocks.{L}.mlp.post", "zero", units=u) for L, u in units.items()]
    )
    before = snapshot(model)
    with plan.apply(model):
        result = model.forward(batch, capture=hooks)
    for layer, ids in units.items():
        assert (result.cache[f"blocks.{layer}.mlp.post"][..., ids] == 0).all()  # activation gone, not only its write
    assert (result.output[batch.attention_mask.bool()] - reference).abs().max() <= 1e-5
    assert_bit_identical(model, before)
