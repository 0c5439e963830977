"""evaluate_plans: the measured impact of pruning plans (plugins/pruning/impact.py).

What must hold on tiny_llama: a plan that prunes nothing reproduces the baseline EXACTLY; the
shared-sweep path for neuron and head plans equals applying their weight masks one by one
(<= 1e-4); perplexity is exp(total NLL / predicted tokens) computed independently, text by
text; the bootstrap CI contains the point estimate and is reproducible from its seed; every
parameter is bit-identical after the evaluation; bad inputs are one ConfigError line.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from interpsuite_plugins.pruning.impact import evaluate_plans, plan_interventions
from interpsuite_plugins.pruning.masks import masked
from interpsuite_plugins.pruning.plan import PruningPlan, plan_from_scores

from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pruning removes weights that matter least.",
    "1 2 3 4 5",
    "Interpretability asks what a network computes.",
    "A short one.",
    "Language models predict the next token.",
]


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models["tiny_llama"]


def magnitude(model) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().abs()
        for name, p in model.hf_model.named_parameters()
        if p.dim() == 2 and name.endswith("weight") and "embed" not in name and "lm_head" not in name
    }


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.hf_model.named_parameters()}


def assert_bit_identical(model, before: dict[str, torch.Tensor]) -> None:
    for name, p in model.hf_model.named_parameters():
        assert torch.equal(p.detach().view(torch.int32), before[name].view(torch.int32)), name


def direct_perplexity(model, texts) -> float:
    """One unpadded pass per text, own log-softmax: exp(total NLL / predicted tokens)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            batch = model.tokenize([text])
            logits = model.hf_model(input_ids=batch.input_ids).logits[0].double()
            ids = batch.input_ids[0]
            total += float(-logits[:-1].log_softmax(-1).gather(-1, ids[1:, None]).sum())
            count += ids.numel() - 1
    return math.exp(total / count)


def value(result, plan: int, task: str = "perplexity") -> float:
    rows = result.table[(result.table.plan == plan) & (result.table.task == task)]
    assert len(rows) == 1
    return float(rows.value.iloc[0])


# --- exactness ----------------------------------------------------------------------------


def test_sparsity_zero_reproduces_the_baseline_exactly(llama):
    plans = [
        plan_from_scores(llama, magnitude(llama), 0.0, "unstructured", "magnitude"),
        PruningPlan.for_units(llama, "neurons", {}),
        plan_from_scores(llama, magnitude(llama), 0.5, "unstructured", "magnitude"),
    ]
    result = evaluate_plans(llama, plans, TEXTS, batch_size=4, n_boot=100)
    base = result.baseline_value("perplexity")
    assert value(result, 0) == base  # the same float, not close
    assert value(result, 1) == base
    assert np.array_equal(result.samples["perplexity"][1], result.samples["perplexity"][0])
    assert abs(value(result, 2) - base) > 1e-3  # a plan that prunes something changes the model
    check = result.checks["sparsity0_matches_baseline"]
    assert check.value == 0.0 and check.passed
    assert list(result.table.path) == ["masked", "masked", "masked"]


def test_perplexity_is_exp_of_the_mean_nll_computed_directly(llama):
    plan = PruningPlan.for_units(llama, "heads", {1: [0, 3]})
    result = evaluate_plans(llama, [plan], TEXTS, batch_size=4, n_boot=0)
    assert result.baseline_value("perplexity") == pytest.approx(direct_perplexity(llama, TEXTS), rel=1e-5)
    with masked(llama, plan):
        pruned = direct_perplexity(llama, TEXTS)
    assert value(result, 0) == pytest.approx(pruned, rel=1e-5)
    tokens = sum(len(llama.tokenize([t]).input_ids[0]) - 1 for t in TEXTS)
    assert result.weights["perplexity"].sum() == tokens
    assert result.baseline.n.iloc[0] == len(TEXTS)
    assert math.isnan(result.baseline.ci_low.iloc[0])  # n_boot=0: no interval


def test_sweep_path_equals_masked_path_for_neuron_and_head_plans(llama):
    plans = [
        PruningPlan.for_units(llama, "neurons", {0: [1, 5, 7], 1: list(range(0, 128, 3))}, criterion="a"),
        PruningPlan.for_units(llama, "neurons", {1: [2]}, criterion="b"),
        PruningPlan.for_units(llama, "heads", {0: [1], 1: [0, 2]}, criterion="c"),
        PruningPlan.for_units(llama, "heads", {0: [3]}, criterion="d"),
    ]
    options = {"tasks": ("perplexity", "ioi"), "batch_size": 4, "n_boot": 50, "n_pairs": 6, "sweep_batch": 16}
    shared = evaluate_plans(llama, plans, TEXTS, **options)
    alone = evaluate_plans(llama, plans, TEXTS, share_passes=False, **options)
    assert set(shared.table.path) == {"sweep"} and set(alone.table.path) == {"masked"}
    for task in ("perplexity", "ioi"):
        a, b = shared.samples[task], alone.samples[task]
        assert np.array_equal(a[0], b[0])  # the baseline is one plain pass either way
        assert np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))) <= 1e-4
        assert not np.allclose(a[1], a[0], atol=1e-4)  # the plans do change the model
    for granularity in ("neurons", "heads"):
        check = shared.checks[f"sweep_matches_masked.{granularity}"]
        assert check.passed and check.value <= 1e-4
    assert "sweep_matches_masked.neurons" not in alone.checks


def test_plan_interventions_are_the_zero_interventions_of_the_units(llama):
    neurons = PruningPlan.for_units(llama, "neurons", {1: [4, 2]})
    heads = PruningPlan.for_units(llama, "heads", {0: [1]})
    assert plan_interventions(neurons) == [Intervention("blocks.1.mlp.post", "zero", units=[2, 4])]
    assert plan_interventions(heads) == [Intervention("blocks.0.attn.z", "zero", heads=[1])]
    with pytest.raises(ConfigError, match="unstructured"):
        plan_interventions(plan_from_scores(llama, magnitude(llama), 0.1, "unstructured", "magnitude"))


# --- tasks and intervals --------------------------------------------------------------------


def test_ci_contains_the_point_estimate_and_is_seeded(llama):
    plans = [
        plan_from_scores(llama, magnitude(llama), 0.3, "unstructured", "magnitude"),
        PruningPlan.for_units(llama, "neurons", {0: list(range(32))}),
    ]
    options = {"tasks": ("perplexity", "ioi", "facts"), "batch_size": 4, "n_boot": 300, "n_pairs": 8}
    first = evaluate_plans(llama, plans, TEXTS, allow_first_piece=True, **options)
    again = evaluate_plans(llama, plans, TEXTS, allow_first_piece=True, **options)
    for frame in (first.table, first.baseline):
        assert (frame.ci_low <= frame.value).all() and (frame.value <= frame.ci_high).all()
        continuous = frame[frame.task != "facts"]
        assert (continuous.ci_low < continuous.ci_high).all()
    assert first.table[["value", "ci_low", "ci_high"]].equals(again.table[["value", "ci_low", "ci_high"]])
    facts = first.table[first.table.task == "facts"]
    assert ((facts.value >= 0) & (facts.value <= 1)).all()
    assert set(first.baseline.n) == {len(TEXTS), 8}
    assert list(first.table.columns[:8]) == [
        "criterion", "granularity", "sparsity", "task", "value", "ci_low", "ci_high", "n",
    ]  # fmt: skip
    curve = first.curve("perplexity")
    assert (curve.groupby(["criterion", "granularity"]).sparsity.min() == 0).all()  # each curve starts at baseline
    assert (curve[curve.path == "baseline"].value == first.baseline_value("perplexity")).all()


def test_ioi_baseline_is_the_mean_logit_difference(llama):
    from interpsuite_plugins.mechanistic.metrics import logit_diff
    from interpsuite_plugins.mechanistic.pairs import ioi_pairs, tokenize_pairs

    result = evaluate_plans(llama, [], None, tasks=("ioi",), n_pairs=5, n_boot=0, batch_size=2)
    pairs = tokenize_pairs(llama, ioi_pairs(5, 0, llama.tokenizer))
    keep, column = pairs.clean.last_positions()
    with torch.no_grad():
        logits = llama.forward(pairs.clean, logits_to_keep=keep).output
    expected = float(logit_diff(logits, column, pairs.answer_ids, pairs.wrong_ids).double().mean())
    assert result.baseline_value("ioi") == pytest.approx(expected, abs=1e-5)
    assert result.table.empty


# --- the model is left as it was ------------------------------------------------------------


def test_every_parameter_is_bit_identical_after_evaluation(llama):
    before = snapshot(llama)
    plans = [
        plan_from_scores(llama, magnitude(llama), 0.5, "unstructured", "magnitude"),
        plan_from_scores(llama, magnitude(llama), 0.7, "unstructured", "magnitude", scope="global"),
        PruningPlan.for_units(llama, "heads", {0: [0, 1]}),
    ]
    result = evaluate_plans(llama, plans, TEXTS[:3], batch_size=2, n_boot=0)
    assert_bit_identical(llama, before)
    assert all(abs(value(result, i) - result.baseline_value("perplexity")) > 1e-3 for i in range(3))


# --- bad input ----------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors(tiny_models, llama):
    plan = PruningPlan.for_units(llama, "heads", {0: [0]})
    cases = [
        (lambda: evaluate_plans(llama, [plan], None), "needs evaluation text"),
        (lambda: evaluate_plans(llama, [plan], []), "needs evaluation text"),
        (lambda: evaluate_plans(llama, [plan], ["a", "b", "x"]), "single token"),
        (lambda: evaluate_plans(llama, [plan], ["ok text", ""]), "empty"),
        (lambda: evaluate_plans(llama, [plan], TEXTS, tasks=("bleu",)), "perplexity, ioi, facts"),
        (lambda: evaluate_plans(llama, [plan], TEXTS, tasks=()), "non-empty"),
        (lambda: evaluate_plans(llama, [plan], TEXTS, batch_size=0), "batch_size"),
        (lambda: evaluate_plans(llama, [plan], TEXTS, n_boot=-1), "n_boot"),
        (lambda: evaluate_plans(llama, ["plan"], TEXTS), "not a PruningPlan"),
        (lambda: evaluate_plans(tiny_models["tiny_bert"], [], TEXTS), "causal LM"),
        (lambda: evaluate_plans(llama, [PruningPlan.for_units(tiny_models["tiny_gpt2"], "neurons", {0: [0]})], TEXTS),
         "this model"),
    ]  # fmt: skip
    for call, match in cases:
        with pytest.raises(ConfigError, match=match) as info:
            call()
        assert "\n" not in str(info.value)
    with masked(llama, plan), pytest.raises(ConfigError, match="already applied"):
        evaluate_plans(llama, [plan], TEXTS)
