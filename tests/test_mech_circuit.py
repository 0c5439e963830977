"""attribution_patching and circuit_discovery: exactness where the model is linear in the patched
activation, the circuit evaluation's endpoints and batching, bad inputs, and the IOI known answer."""

from __future__ import annotations

import json

import pytest
import torch
from interpsuite_plugins.mechanistic.attribution_patching import (
    AttributionPatching,
    attribution_patching,
    real_head_patching,
    sweep_corrupted,
)
from interpsuite_plugins.mechanistic.circuit import (
    CircuitDiscovery,
    ablation_interventions,
    all_heads,
    complement,
    evaluate_ablations,
    evaluate_circuits,
    group_means,
    prepare,
    rank_heads,
    search_circuit,
    template_groups,
)
from interpsuite_plugins.mechanistic.metrics import last_positions, logit_diff
from interpsuite_plugins.mechanistic.pairs import PromptPair, ioi_pairs, tokenize_pairs
from torch import nn

from interpsuite.analyzer import RunContext, build_config
from interpsuite.data import Inputs
from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.models import load_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]


def run(cls, model, options=None):
    analyzer = cls(build_config(cls, options or {}))
    analyzer.validate(model.info, analyzer.cfg)
    return analyzer.run(RunContext(model=model, inputs=Inputs(TEXTS, "test"), show_progress=False))


def linear_top(name: str):
    """A tiny model whose logits are linear in the last block's attn.z and resid_post: the last
    MLP writes zeros and the final norm is the identity."""
    model = load_model(name)
    hf = model.hf_model
    if model.info.architecture == "llama":
        hf.model.layers[-1].mlp.down_proj.weight.data.zero_()
        hf.model.norm = nn.Identity()
    else:
        block = hf.transformer.h[-1]
        block.mlp.c_proj.weight.data.zero_()
        block.mlp.c_proj.bias.data.zero_()
        hf.transformer.ln_f = nn.Identity()
    return model


@pytest.fixture(scope="module")
def tiny_llama():
    return load_model("tiny_llama")


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_attribution_patching_equals_real_patching_on_a_linear_model(name):
    model = linear_top(name)
    last = model.info.n_layers - 1
    pb = tokenize_pairs(model, ioi_pairs(6, 0, model.tokenizer))
    estimate = attribution_patching(model, pb, ["attn.z", "resid_post"], [last])
    heads = estimate.head_map([last])
    real = real_head_patching(model, pb, estimate, [last], batch_size=8)
    scale = float(real.abs().max())
    assert scale > 1e-3  # the heads matter, so the comparison says something
    torch.testing.assert_close(heads, real.double(), atol=1e-4 * scale, rtol=0)
    # per position: write the clean resid_post at one position into the corrupted run
    rows = list(range(pb.size))
    width = int(pb.clean.lengths.max())
    name_post = f"blocks.{last}.resid_post"
    items = [
        [Intervention(name_post, "replace", value=estimate.clean_acts[name_post], positions=[t])] for t in range(width)
    ]
    gap = float(estimate.clean.mean() - estimate.corrupted.mean())
    real_pos = (sweep_corrupted(model, pb, items, batch_size=16) - float(estimate.corrupted.mean())) / gap
    est_pos = estimate.position_map("resid_post", [last], rows)[0, :width]
    torch.testing.assert_close(est_pos, real_pos.double().cpu(), atol=1e-4 * float(real_pos.abs().max()), rtol=0)
    assert model.hooks_left() == 0


def test_attribution_patching_follows_the_position_map():
    """Pairs of different lengths: clean activations are moved to corrupted positions before the
    difference is taken, so the estimate still equals real patching on the linear model."""
    model = linear_top("tiny_llama")
    last = model.info.n_layers - 1
    clean, corrupted = "When Mary left, John gave it to ", "When Mary left, a John gave it to "
    # byte tokenizer: one token per character; " a" (2 characters) inserted at 15
    position_map = [*range(15), 14, 14, *range(15, len(clean))]
    pairs = [PromptPair(clean, corrupted, "M", "J", tuple(position_map)), PromptPair(clean, clean, "M", "J")]
    pb = tokenize_pairs(model, pairs)
    estimate = attribution_patching(model, pb, ["attn.z"], [last])
    real = real_head_patching(model, pb, estimate, [last], batch_size=8)
    scale = float(real.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(estimate.head_map([last]), real.double(), atol=1e-4 * scale, rtol=0)


def test_attribution_is_not_exact_where_the_model_is_not_linear(tiny_llama):
    """Control for the test above: at layer 0 (attention and MLP follow) estimate != patching."""
    pb = tokenize_pairs(tiny_llama, ioi_pairs(6, 0, tiny_llama.tokenizer))
    estimate = attribution_patching(tiny_llama, pb, ["attn.z"], [0])
    real = real_head_patching(tiny_llama, pb, estimate, [0], batch_size=8)
    assert float((estimate.head_map([0]) - real.double()).abs().max()) > 1e-4


def test_circuit_ablation_estimate_is_exact_on_a_linear_model():
    model = linear_top("tiny_llama")
    last = model.info.n_layers - 1
    pb = tokenize_pairs(model, ioi_pairs(10, 0, model.tokenizer))
    inputs = prepare(model, pb, "mean")
    heads = [(last, h) for h in range(model.info.n_heads)]
    values = evaluate_ablations(model, pb, [[]] + [[h] for h in heads], inputs.reference, 64).double().mean(1)
    real = (values[1:] - values[0]).cpu()
    torch.testing.assert_close(inputs.estimate[last], real, atol=1e-5 * float(real.abs().max()), rtol=0)


@pytest.fixture(scope="module")
def circuit_setup(tiny_llama):
    pb = tokenize_pairs(tiny_llama, ioi_pairs(12, 0, tiny_llama.tokenizer))
    return pb, prepare(tiny_llama, pb, "mean")


def loop_ablation(model, pb, heads, reference) -> torch.Tensor:
    """Reference: one plain forward pass with the head set ablated (what a sweep must reproduce)."""
    keep, column = last_positions(pb.clean)
    with torch.no_grad():
        out = model.forward(pb.clean, interventions=ablation_interventions(heads, reference), logits_to_keep=keep)
    return logit_diff(out.output, column, pb.answer_ids, pb.wrong_ids)


def test_circuit_evaluation_endpoints(tiny_llama, circuit_setup):
    pb, inputs = circuit_setup
    values = evaluate_circuits(tiny_llama, pb, [all_heads(tiny_llama.info), []], inputs.reference)
    assert values[0] == pytest.approx(float(inputs.clean.double().mean()), abs=1e-5)
    everything = loop_ablation(tiny_llama, pb, all_heads(tiny_llama.info), inputs.reference).double().mean()
    assert values[1] == pytest.approx(float(everything), abs=1e-5)
    assert abs(float(values[1]) - float(values[0])) > 1e-4  # ablating every head changes the metric


def test_batched_evaluation_equals_the_loop(tiny_llama, circuit_setup):
    pb, inputs = circuit_setup
    sets = [[(0, 1)], [(1, 0), (1, 3)], [(0, 0), (0, 2), (1, 2)], []]
    batched = evaluate_ablations(tiny_llama, pb, sets, inputs.reference, batch_size=64)
    one_per_pass = evaluate_ablations(tiny_llama, pb, sets, inputs.reference, batch_size=1)
    loop = torch.stack([loop_ablation(tiny_llama, pb, heads, inputs.reference) for heads in sets])
    torch.testing.assert_close(batched, loop, atol=1e-5, rtol=0)
    torch.testing.assert_close(one_per_pass, loop, atol=1e-5, rtol=0)
    zero = evaluate_ablations(tiny_llama, pb, sets[:1], None)
    torch.testing.assert_close(zero[0], loop_ablation(tiny_llama, pb, sets[0], None), atol=1e-5, rtol=0)
    assert tiny_llama.hooks_left() == 0


def test_reference_is_the_mean_over_the_template_group(circuit_setup):
    pb, _ = circuit_setup
    groups = template_groups(pb)
    acts = torch.randn(pb.size, 5, 3)
    means = group_means(acts, groups)
    for row, g in enumerate(groups):
        members = [r for r, other in enumerate(groups) if other == g]
        torch.testing.assert_close(means[row], acts[members].mean(0))


def test_search_returns_the_smallest_k_that_is_sufficient_and_necessary():
    def evaluate(k):  # kept rises to 1 at k = 10, ablated falls from 1 to 0 at k = 20
        return min(1.0, k / 10), max(0.0, 1 - k / 20)

    k, history = search_circuit(evaluate, 30, 0.8, 0.5)
    assert k == 10 and history[10] == (1.0, 0.5)
    assert history[30] == (1.0, 0.0)  # k = all heads follows from k = 0: nothing kept
    assert all(not (kept >= 0.8 and ablated <= 0.5) for j, (kept, ablated) in history.items() if j < k)
    assert search_circuit(evaluate, 30, 0.8, 0.9)[0] == 8  # sufficiency alone decides
    assert search_circuit(lambda k: (0.9, 1.0), 30, 0.8, 0.5)[0] == 30  # nothing qualifies: all heads


@pytest.mark.parametrize("name", ["tiny_llama", "tiny_gpt2"])
def test_default_runs_pass_their_checks(name):
    model = load_model(name)
    for cls in (AttributionPatching, CircuitDiscovery):
        result = run(cls, model)
        assert result.failed_checks == [], (cls.name, result.checks)
        assert model.hooks_left() == 0
    assert "pearson_vs_activation_patching" in result.metrics or "circuit_faithfulness" in result.checks


def test_bad_inputs(tiny_llama, tmp_path):
    missing = str(tmp_path / "missing.jsonl")
    for cls in (AttributionPatching, CircuitDiscovery):
        cfg = build_config(cls, {"pairs": missing})
        with pytest.raises(ConfigError, match="not found"):
            cls(cfg).validate(tiny_llama.info, cfg)
    with pytest.raises(ConfigError, match="ablation"):
        run(CircuitDiscovery, tiny_llama, {"ablation": "resample"})
    with pytest.raises(ConfigError, match="sites"):
        run(AttributionPatching, tiny_llama, {"sites": ["attn.pattern"]})
    path = tmp_path / "pairs.jsonl"
    pair = {"clean": "When Mary left, John", "corrupted": "When Mary left, a John", "answer": "x", "wrong": "y"}
    path.write_text(json.dumps(pair) + "\n")
    for cls in (AttributionPatching, CircuitDiscovery):
        with pytest.raises(ConfigError, match="patching needs equal lengths"):
            run(cls, tiny_llama, {"pairs": str(path)})
    n_tokens = int(tiny_llama.tokenize([pair["clean"]]).lengths[0])
    mapped = {**pair, "corrupted": "When Jane left, John", "position_map": list(range(n_tokens))}
    path.write_text(json.dumps(mapped) + "\n")
    with pytest.raises(ConfigError, match="position_map"):
        run(CircuitDiscovery, tiny_llama, {"pairs": str(path)})
    assert tiny_llama.hooks_left() == 0


def test_ioi_logit_difference_is_positive_on_smollm2(smollm2):
    """Known answer: SmolLM2 does IOI on at least 90% of 100 generated prompts (one batched pass)."""
    pb = tokenize_pairs(smollm2, ioi_pairs(100, 0, smollm2.tokenizer))
    keep, column = last_positions(pb.clean)
    with torch.no_grad():
        out = smollm2.forward(pb.clean, logits_to_keep=keep)
    diffs = logit_diff(out.output, column, pb.answer_ids, pb.wrong_ids)
    assert float((diffs > 0).float().mean()) >= 0.9
    assert float(diffs.mean()) > 2.0


def test_attribution_patching_tracks_real_patching_on_smollm2(smollm2):
    """Known answer: on IOI the estimate follows real head patching (late layers, where the heads act)."""
    result = run(AttributionPatching, smollm2, {"layers": [23, 24, 29], "sites": ["attn.z"], "n_pairs": 8})
    assert result.failed_checks == []
    assert result.metrics["pearson_vs_activation_patching"] >= 0.9
    assert result.summary["top_heads"][0] == "L23H3"


def test_ioi_circuit_on_smollm2_is_sufficient_and_necessary(smollm2):
    """Known answer (40 prompts to keep it short): the top two heads by estimated ablation loss,
    L23H3 and L29H1, keep >= 80% of the logit difference alone and ablating them removes > 50%."""
    pb = tokenize_pairs(smollm2, ioi_pairs(40, 0, smollm2.tokenizer))
    inputs = prepare(smollm2, pb, "mean")
    ranked = rank_heads(inputs.estimate)
    assert set(ranked[:2]) == {(23, 3), (29, 1)}
    full = float(inputs.clean.double().mean())
    sets = [complement(ranked[:2], smollm2.info), ranked[:2]]
    kept, ablated = (evaluate_ablations(smollm2, pb, sets, inputs.reference).double().mean(1) / full).tolist()
    assert kept >= 0.8 and ablated <= 0.5
