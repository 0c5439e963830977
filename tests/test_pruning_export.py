"""export_pruned (plugins/pruning/export.py): pruned models as standard Hugging Face folders.

What must hold: the folder reloads with transformers alone and its outputs equal the
hook-level ablation of the same units on the in-memory model (manual masking, <= 1e-5), also
where units were removed physically (neurons everywhere when each layer prunes the same
count; grouped-query heads on Llama when each KV group loses the same count); where the
config cannot express the removal the zeros are stored and the report says so; the shared
model is bit-identical afterwards; an existing path is refused unless overwrite=True.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from interpsuite_plugins.pruning.export import export_pruned
from interpsuite_plugins.pruning.plan import PruningPlan, plan_from_scores
from safetensors.torch import load_file

from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pruning removes weights.", "1 2 3"]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.hf_model.named_parameters()}


def assert_bit_identical(model, before) -> None:
    for name, p in model.hf_model.named_parameters():
        assert torch.equal(p.detach().view(torch.int32), before[name].view(torch.int32)), name


def reload(model, path):
    auto = getattr(transformers, model.adapter.auto_class)  # AutoModelForCausalLM, or AutoModel for BERT
    return auto.from_pretrained(path).eval()


def reloaded_outputs(model, path, batch) -> torch.Tensor:
    with torch.no_grad():
        out = reload(model, path)(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    value = out.logits if model.info.is_causal else out.last_hidden_state
    return value[batch.attention_mask.bool()]


def manual(model, batch, interventions) -> torch.Tensor:
    return model.forward(batch, interventions=interventions).output[batch.attention_mask.bool()]


def neuron_ivs(units):
    return [Intervention(f"blocks.{layer}.mlp.post", "zero", units=ids) for layer, ids in units.items()]


def head_ivs(units):
    return [Intervention(f"blocks.{layer}.attn.z", "zero", heads=ids) for layer, ids in units.items()]


def config_of(path) -> dict:
    return json.loads((path / "config.json").read_text())


@pytest.mark.parametrize(
    ("name", "field", "d_mlp"), [("tiny_llama", "intermediate_size", 128), ("tiny_gpt2", "n_inner", 256),
                                 ("tiny_bert", "intermediate_size", 128)],
)  # fmt: skip
def test_uniform_neurons_are_removed_physically(tiny_models, tmp_path, name, field, d_mlp):
    model = tiny_models[name]
    units = {0: [0, 7, 30, 99], 1: [1, 2, 50, 127]}
    plan = PruningPlan.for_units(model, "neurons", units)
    batch = model.tokenize(TEXTS)
    reference = manual(model, batch, neuron_ivs(units))
    clean = manual(model, batch, [])
    before = snapshot(model)
    report = export_pruned(model, plan, tmp_path / "out", texts=TEXTS)
    assert_bit_identical(model, before)
    assert report.physical and report.config_changes == {field: d_mlp - 4}
    assert config_of(tmp_path / "out")[field] == d_mlp - 4
    n_writers = 2 if name == "tiny_llama" else 1  # gate + up, or one input projection
    bias = 0 if name == "tiny_llama" else 4  # the input projection's bias entries (GPT-2 / BERT)
    removed = 2 * (4 * 64 * (n_writers + 1) + bias)
    assert report.parameters_before - report.parameters_after == removed
    out = reloaded_outputs(model, tmp_path / "out", batch)
    assert (out - reference).abs().max() <= 1e-5  # physically removed == manual masking
    assert (out - clean).abs().max() > 1e-4
    assert report.max_abs_logit_diff <= 1e-5 and report.passed
    assert "model.safetensors" in report.files and "tokenizer.json" in report.files


def test_uneven_neurons_fall_back_to_stored_zeros_and_say_so(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    units = {0: [0, 7, 30], 1: [1]}
    plan = PruningPlan.for_units(model, "neurons", units)
    report = export_pruned(model, plan, tmp_path / "out", texts=TEXTS)
    assert not report.physical and "zeros are stored" in report.notes[0]
    assert config_of(tmp_path / "out")["intermediate_size"] == 128
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert (weights["model.layers.0.mlp.down_proj.weight"][:, [0, 7, 30]] == 0).all()
    assert (weights["model.layers.0.mlp.gate_proj.weight"][[0, 7, 30]] == 0).all()
    assert (weights["model.layers.0.mlp.down_proj.weight"][:, 1] != 0).any()
    batch = model.tokenize(TEXTS)
    assert (
        reloaded_outputs(model, tmp_path / "out", batch) - manual(model, batch, neuron_ivs(units))
    ).abs().max() <= 1e-5
    assert report.max_abs_logit_diff <= 1e-5


def test_unstructured_stores_the_zeros(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    scores = {n: p.detach().abs() for n, p in model.hf_model.named_parameters() if n.endswith("proj.weight")}
    plan = plan_from_scores(model, scores, 0.5, "unstructured", "magnitude")
    before = snapshot(model)
    report = export_pruned(model, plan, tmp_path / "out", texts=TEXTS)
    assert_bit_identical(model, before)
    weights = load_file(str(tmp_path / "out" / "model.safetensors"))
    for param, keep in plan.masks.items():
        assert torch.equal(weights[param], before[param] * keep)
    assert not report.physical and report.parameters_after == report.parameters_before
    assert report.sparsity_per_module == plan.achieved_sparsity().per_module
    assert all(v == 0.5 for v in report.sparsity_per_module.values())  # 64- and 128-wide rows: exact
    assert report.max_abs_logit_diff <= 1e-5


def test_llama_heads_removed_physically_when_each_kv_group_loses_the_same(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]  # 4 query heads over 2 KV heads: groups {0, 1} and {2, 3}
    units = {0: [0, 3], 1: [1, 2]}
    plan = PruningPlan.for_units(model, "heads", units)
    batch = model.tokenize(TEXTS)
    reference = manual(model, batch, head_ivs(units))
    report = export_pruned(model, plan, tmp_path / "out", texts=TEXTS)
    assert report.physical and report.config_changes["num_attention_heads"] == 2
    config = config_of(tmp_path / "out")
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 2, 16)
    assert report.parameters_before - report.parameters_after == 2 * 2 * (2 * 16 * 64)  # q rows + o columns
    assert (reloaded_outputs(model, tmp_path / "out", batch) - reference).abs().max() <= 1e-5
    uneven = PruningPlan.for_units(model, "heads", {0: [0, 1], 1: [1, 2]})  # layer 0 empties KV group 0
    report = export_pruned(model, uneven, tmp_path / "uneven", texts=TEXTS)
    assert not report.physical and "zeros are stored" in report.notes[0]
    assert config_of(tmp_path / "uneven")["num_attention_heads"] == 4
    assert report.max_abs_logit_diff <= 1e-5


@pytest.mark.parametrize("name", ["tiny_gpt2", "tiny_bert"])
def test_gpt2_and_bert_heads_store_zeros_and_say_why(tiny_models, tmp_path, name):
    model = tiny_models[name]
    units = {0: [1], 1: [0, 3]}
    plan = PruningPlan.for_units(model, "heads", units)
    batch = model.tokenize(TEXTS)
    report = export_pruned(model, plan, tmp_path / "out", texts=TEXTS)
    assert not report.physical and "prune_heads" in report.notes[0]
    out = reloaded_outputs(model, tmp_path / "out", batch)
    assert (out - manual(model, batch, head_ivs(units))).abs().max() <= 1e-5
    assert (out - manual(model, batch, [])).abs().max() > 1e-4
    assert report.max_abs_logit_diff <= 1e-5


def test_existing_path_refused_unless_overwrite(tiny_models, tmp_path):
    model = tiny_models["tiny_gpt2"]
    plan = PruningPlan.for_units(model, "neurons", {0: [1], 1: [2]})
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="overwrite=True") as err:
        export_pruned(model, plan, target)
    assert "\n" not in str(err.value)
    assert (target / "keep.txt").read_text() == "mine"
    report = export_pruned(model, plan, target, overwrite=True, texts=TEXTS)
    assert not (target / "keep.txt").exists() and report.physical
    assert config_of(target)["n_inner"] == 255
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left beside it
