"""The pruning analyzers `pruning_candidates` and `pruning_impact` on tiny models.

What must hold: sparsity 0 reproduces the unpruned perplexity exactly; each plan's row is in the
impact table with its bootstrap band around it; the model is bit-identical afterwards; the
criteria's agreement is computed over the units both measured; bad options are refused before
any weights load, with one line.
"""

from __future__ import annotations

import pytest
import torch

from interpsuite import InterpretabilityPipeline
from interpsuite.errors import ConfigError
from interpsuite.results import read_results

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "Rivers carry sand and mud from the mountains to the sea.",
    "She said that the meeting would start at nine in the morning.",
]


def run(model, analyzers, run_dir):
    InterpretabilityPipeline(
        model=model, data=TEXTS, analyzers=analyzers, output_dir=run_dir, sinks=["rundir"], progress=False
    ).run()
    return read_results(run_dir)


def plan_error(model, analyzers, tmp_path) -> str:
    pipeline = InterpretabilityPipeline(
        model=model, data=TEXTS, analyzers=analyzers, output_dir=tmp_path / "never", sinks=["rundir"], progress=False
    )
    with pytest.raises(ConfigError) as err:
        pipeline.validate()
    return str(err.value)


def test_pruning_impact_curve_starts_at_the_unpruned_model_and_leaves_it_unchanged(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    before = {name: p.detach().clone() for name, p in model.hf_model.named_parameters()}
    entry = run(model, {"pruning_impact": {"sparsities": [0.0, 0.3, 0.6]}}, tmp_path)["analyzers"]["pruning_impact"]
    assert entry["status"] == "ok", entry["error"]
    assert all(check["passed"] for check in entry["checks"].values()), entry["checks"]
    metrics = entry["metrics"]
    for criterion in ("magnitude", "wanda"):
        assert metrics[f"perplexity.{criterion}.0"] == metrics["perplexity.baseline"]  # exactly
        assert metrics[f"perplexity.{criterion}.0.6"] != metrics["perplexity.baseline"]
    assert entry["checks"]["achieved_sparsity_row_error_elements"]["value"] <= 0.5
    assert entry["checks"]["calibration_eval_overlap"]["value"] == 0
    table = (tmp_path / "tables" / "pruning_impact" / "impact.csv").read_text().splitlines()
    assert len(table) == 1 + 2 * 3
    after = dict(model.hf_model.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_pruning_impact_structured_plans_share_a_sweep_that_matches_the_masks(tiny_models, tmp_path):
    options = {"granularity": "heads", "criteria": ["taylor", "ablation"], "sparsities": [0.0, 0.5]}
    entry = run(tiny_models["tiny_gpt2"], {"pruning_impact": options}, tmp_path)["analyzers"]["pruning_impact"]
    assert entry["status"] == "ok", entry["error"]
    assert entry["checks"]["sweep_matches_masked.heads"]["value"] <= 1e-4
    assert entry["checks"]["sparsity0_matches_baseline"]["value"] == 0


def test_pruning_candidates_compares_criteria_on_the_units_both_measured(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    options = {"ablation_units": 16, "candidate_fraction": 0.25}
    payload = run(model, {"pruning_candidates": options}, tmp_path)
    entry = payload["analyzers"]["pruning_candidates"]
    assert entry["status"] == "ok", entry["error"]
    assert all(check["passed"] for check in entry["checks"].values()), entry["checks"]
    assert entry["checks"]["neurons.ablation_sweep_vs_forward"]["value"] <= 1e-4
    agreement = (tmp_path / "tables" / "pruning_candidates" / "agreement.csv").read_text().splitlines()
    pairs = {tuple(line.split(",")[:3]) for line in agreement[1:]}
    assert ("neurons", "activation", "ablation") in pairs and ("heads", "taylor", "ablation") in pairs
    assert ("unstructured", "magnitude", "wanda") in pairs
    import pandas as pd

    neurons = pd.read_csv(tmp_path / "tables" / "pruning_candidates" / "neurons.csv")
    measured = neurons["ablation"].notna()
    assert measured.sum() == 32  # 16 lowest by taylor + 16 at random, no unit twice
    lowest_taylor = set(neurons.nsmallest(16, "taylor").index)
    assert lowest_taylor <= set(neurons.index[measured])
    row = [r for r in agreement[1:] if r.startswith("neurons,taylor,ablation")][0].split(",")
    assert int(row[-1]) == 32 and int(row[-2]) == 8  # n measured by both, k = 25% of them


def test_pruning_candidates_on_an_encoder_leaves_out_the_loss_based_criteria(tiny_models, tmp_path):
    entry = run(tiny_models["tiny_bert"], {"pruning_candidates": {}}, tmp_path)["analyzers"]["pruning_candidates"]
    assert entry["status"] == "ok", entry["error"]
    assert set(entry["summary"]["skipped_on_encoder"]) == {
        "neurons.taylor", "neurons.ablation", "heads.taylor", "heads.ablation"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("analyzers", "message"),
    [
        ({"pruning_impact": {"sparsities": [0.5, 1.0]}}, "outside [0, 1)"),
        ({"pruning_impact": {"sparsities": [-0.1]}}, "outside [0, 1)"),
        ({"pruning_impact": {"criteria": ["random"]}}, "choose from magnitude, wanda"),
        ({"pruning_impact": {"granularity": "neurons", "criteria": ["wanda"]}}, "activation, taylor, ablation"),
        ({"pruning_impact": {"calibration": "inputs", "eval_texts": "inputs"}}, "must be disjoint"),
        ({"pruning_impact": {"tasks": ["bleu"]}}, "choose from perplexity"),
        ({"pruning_candidates": {"sparsity": 1.5}}, "outside [0, 1)"),
        ({"pruning_candidates": {"heads": ["magnitude"]}}, "choose from taylor, ablation"),
        ({"pruning_candidates": {"unstructured": [], "neurons": [], "heads": []}}, "every criterion list is empty"),
    ],
)
def test_pruning_analyzers_refuse_bad_options(tiny_models, tmp_path, analyzers, message):
    assert message in plan_error(tiny_models["tiny_llama"], analyzers, tmp_path)


def test_pruning_export_writes_a_smaller_model_that_transformers_reloads(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    options = {"granularity": "neurons", "criterion": "activation", "sparsity": 0.25, "path": str(tmp_path / "out")}
    entry = run(tiny_models["tiny_llama"], {"pruning_export": options}, tmp_path / "run")["analyzers"]["pruning_export"]
    assert entry["status"] == "ok", entry["error"]
    assert entry["checks"]["export_max_abs_logit_diff"]["value"] <= 1e-5
    assert entry["summary"]["physical"] is True
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.intermediate_size == tiny_models["tiny_llama"].hf_model.config.intermediate_size * 3 // 4
    assert entry["metrics"]["parameters_after"] == sum(p.numel() for p in reloaded.parameters())
    # the folder now exists: a second export there is refused before anything runs
    error = plan_error(tiny_models["tiny_llama"], {"pruning_export": options}, tmp_path)
    assert "already exists" in error and "overwrite=true" in error
