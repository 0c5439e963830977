"""causal_tracing (ROME's causal trace) and the shipped factual dataset.

Tiny models: exact properties (batched restorations equal a one-restoration-per-pass loop,
the restoration controls reproduce the clean and corrupted probabilities, the noise lands on
the subject only, with the right scale) and bad-input messages. SmolLM2: the dataset's facts
are known, and a short trace has a positive total effect. Regression: traces equal the numbers
recorded (tests/data/record_causal_tracing.py) on the engine before causal tracing moved onto
the shared sweep engine.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from interpsuite_plugins.mechanistic.causal_tracing import (
    BUCKETS,
    CausalTracing,
    Fact,
    buckets_of,
    load_facts,
    noise_intervention,
    probability_metric,
    restoration_interventions,
    select_facts,
    subject_span,
    trace_prompt,
    window_layers,
)
from interpsuite_plugins.mechanistic.pairs import FACTUAL_FILE, factual_pairs

from interpsuite.analyzer import RunContext, build_config
from interpsuite.data import Inputs
from interpsuite.errors import AnalyzerError, ConfigError

CAUSAL = ("tiny_llama", "tiny_gpt2")
REFERENCE = Path(__file__).with_name("data") / "causal_tracing_reference.json"
#: |probability difference| allowed against the recorded numbers (fp32 passes grouped differently)
REFERENCE_TOLERANCE = 1e-5
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France.", "Hi"]


def run(model, options):
    analyzer = CausalTracing(build_config(CausalTracing, options))
    analyzer.validate(model.info, analyzer.cfg)
    ctx = RunContext(model=model, inputs=Inputs(TEXTS, "test"), show_progress=False)
    return analyzer.run(ctx)


def write_facts(path, facts):
    path.write_text("".join(json.dumps(f) + "\n" for f in facts), encoding="utf-8")
    return str(path)


# --- the shipped dataset ----------------------------------------------------------------
def test_factual_dataset_shape():
    facts = load_facts("factual")
    assert len(facts) >= 60
    relations = Counter(f.relation for f in facts)
    assert 6 <= len(relations) <= 10
    assert min(relations.values()) >= 5
    assert len({f.prompt for f in facts}) == len(facts)
    for fact in facts:
        assert fact.subject in fact.prompt
        assert fact.answer.startswith(" ") and fact.answer.strip()
    records = [json.loads(line) for line in FACTUAL_FILE.read_text(encoding="utf-8").splitlines()]
    assert all(set(r) == {"prompt", "subject", "answer", "relation"} for r in records)


def test_select_facts_round_robin_covers_relations():
    facts = load_facts("factual")
    n_relations = len({f.relation for f in facts})
    chosen = select_facts(facts, n_relations)
    assert len({f.relation for f in chosen}) == n_relations
    assert select_facts(facts, None) == facts
    assert len(select_facts(facts, 3)) == 3


def test_rome_buckets_and_windows():
    # "The Eiffel Tower is located in the city of": subject tokens 0..3, 10 tokens
    assert buckets_of(0, 4, 10) == {
        "first_subject": [0],
        "middle_subject": [1, 2],
        "last_subject": [3],
        "first_subsequent": [4],
        "further": [5, 6, 7, 8],
        "last": [9],
    }
    # one-token subject followed by one token: both ends count twice, as in ROME's notebook
    one = buckets_of(4, 5, 6)
    assert one["first_subject"] == one["last_subject"] == [4] and one["middle_subject"] == []
    assert one["first_subsequent"] == one["last"] == [5] and one["further"] == []
    assert window_layers(12, 10, 30) == list(range(7, 17))
    assert window_layers(0, 10, 30) == list(range(0, 5))
    assert window_layers(29, 10, 30) == list(range(24, 30))
    assert window_layers(3, 1, 30) == [3]


# --- tiny models: exactness -------------------------------------------------------------
@pytest.mark.parametrize("name", CAUSAL)
def test_defaults_pass_their_checks(tiny_models, name):
    model = tiny_models[name]
    result = run(model, {"max_prompts": 2, "samples": 2})
    assert result.checks and not result.failed_checks, result.checks
    assert result.checks["full_restore_reproduces_clean_abs_err"].value <= 1e-5
    assert result.checks["unrestored_row_reproduces_corrupted_abs_err"].value <= 1e-5
    assert result.checks["noise_outside_subject_max_abs"].value == 0.0
    for kind in ("resid", "mlp", "attn"):
        table = result.tables[f"{kind}_by_bucket"]
        assert list(table.columns) == ["layer", *BUCKETS]
        assert len(table) == model.info.n_layers
    prompts = result.tables["prompts"]
    assert len(prompts) == 2 and prompts["note"].str.contains("first piece").all()  # byte-level answers
    assert np.allclose(prompts["total_effect"], prompts["p_clean"] - prompts["p_corrupted"])
    assert set(result.figures) == {"causal_trace", "first_prompt_trace"}
    assert model.hooks_left() == 0


@pytest.mark.parametrize("name", CAUSAL)
def test_batched_restorations_equal_one_pass_per_restoration(tiny_models, name, tmp_path):
    """Reference: every restoration as its own full forward pass (noise + restored states)."""
    model = tiny_models[name]
    fact = Fact("So, Bob is in", "Bob", " Paris", "located_in")
    analyzer = CausalTracing(build_config(CausalTracing, {"window": 1}))
    prepared = analyzer.prepare(model, [fact])[0]
    assert prepared.start > 0  # positions before the subject exist (and are skipped)
    noise = torch.randn(prepared.end - prepared.start, model.info.d_model, generator=torch.Generator().manual_seed(1))
    n_layers = model.info.n_layers
    for window in (1, 2):
        trace = trace_prompt(model, prepared, [noise * 0.5], ("resid", "mlp", "attn"), window, batch_size=7)
        metric = probability_metric(prepared.target_id)
        clean = model.forward(
            prepared.batch,
            capture=[f"blocks.{L}.{s}" for L in range(n_layers) for s in ("resid_post", "mlp.out", "attn.out")],
        )
        states = {name: value[0] for name, value in clean.cache.items()}
        iv = noise_intervention(noise * 0.5, prepared.start, prepared.end, prepared.length)
        with torch.no_grad():
            p_corrupted = float(metric(model.forward(prepared.batch, interventions=[iv]).output))
            assert abs(trace.samples[0].p_corrupted - p_corrupted) < 1e-6
            for index, restoration in enumerate(trace.restorations):
                restore = restoration_interventions(restoration, states, window, n_layers)
                reference = float(metric(model.forward(prepared.batch, interventions=[iv, *restore]).output))
                assert abs(float(trace.samples[0].restored[index]) - reference) < 1e-5, restoration
        # restoring the residual stream after the last layer at the last token restores p(clean)
        resid = trace.effects("resid")
        assert abs(resid[-1, -1] - (trace.p_clean - trace.p_corrupted)) < 1e-5
        assert np.all(resid[:, : prepared.start] == 0)
    assert model.hooks_left() == 0


def assert_matches_reference(model, name: str) -> None:
    """Re-trace the recorded prompts (same seed, settings and code path as the recorder)."""
    from tests.data.record_causal_tracing import trace_model

    recorded = json.loads(REFERENCE.read_text())[name]
    traces = trace_model(model, recorded["prompts"], recorded["samples"], recorded["window"], recorded["seed"])
    assert len(traces) == len(recorded["traces"])
    for got, want in zip(traces, recorded["traces"], strict=True):
        assert got["prompt"] == want["prompt"]
        close = {"atol": REFERENCE_TOLERANCE, "rtol": 0, "err_msg": f"{name}: {want['prompt']!r}"}
        np.testing.assert_allclose(got["p_clean"], want["p_clean"], **close)
        np.testing.assert_allclose(got["p_corrupted"], want["p_corrupted"], **close)
        for kind, grid in want["effects"].items():
            np.testing.assert_allclose(got["effects"][kind], grid, **close)
        for kind, values in want["controls"].items():
            np.testing.assert_allclose(got["controls"][kind], values, **close)
    assert model.hooks_left() == 0


@pytest.mark.parametrize("name", CAUSAL)
def test_trace_equals_the_recorded_reference(tiny_models, name):
    assert_matches_reference(tiny_models[name], name)


def test_sigma_choices_and_noise_scale(tiny_models):
    model = tiny_models["tiny_llama"]
    weight = model.hf_model.get_input_embeddings().weight.detach().double()
    vocab = run(model, {"max_prompts": 2, "samples": 1, "sigma": "vocab", "noise_scale": 2.0, "kinds": ["resid"]})
    assert vocab.metrics["sigma"] == pytest.approx(float(weight.std()), rel=1e-6)
    assert vocab.metrics["noise_std"] == pytest.approx(2.0 * float(weight.std()), rel=1e-6)
    assert not vocab.failed_checks
    assert set(vocab.tables) == {"resid_by_bucket", "prompts", "first_prompt_grid"}


def test_top_target_and_only_correct(tiny_models):
    model = tiny_models["tiny_gpt2"]
    result = run(model, {"max_prompts": 2, "samples": 1, "target": "top", "kinds": ["attn"]})
    prompts = result.tables["prompts"]
    assert (prompts["target"] == prompts["clean_top"]).all()
    with pytest.raises(AnalyzerError, match="answers none of"):
        run(model, {"max_prompts": 2, "samples": 1, "only_correct": True})


# --- bad inputs ---------------------------------------------------------------------------
def test_subject_not_in_prompt(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    facts = [{"prompt": "The Colosseum is located in the city of", "subject": "The Eiffel Tower", "answer": " Rome"}]
    path = write_facts(tmp_path / "bad.jsonl", facts)
    analyzer = CausalTracing(build_config(CausalTracing, {"prompts": path}))
    with pytest.raises(ConfigError, match="'The Eiffel Tower' not found in the prompt 'The Colosseum is located"):
        analyzer.validate(model.info, analyzer.cfg)
    with pytest.raises(ConfigError, match="not found in the prompt"):
        subject_span(model.tokenizer, "The Colosseum is in", "Eiffel")


def test_answer_not_a_vocabulary_token(tiny_models, tmp_path):
    model = tiny_models["tiny_llama"]
    path = write_facts(
        tmp_path / "f.jsonl", [{"prompt": "The Colosseum is in", "subject": "Colosseum", "answer": " Rome"}]
    )
    analyzer = CausalTracing(build_config(CausalTracing, {"prompts": path, "allow_first_piece": False}))
    analyzer.validate(model.info, analyzer.cfg)
    ctx = RunContext(model=model, inputs=Inputs(TEXTS, "test"), show_progress=False)
    with pytest.raises(ConfigError, match=r"answer of 'The Colosseum is in' ' Rome' is split .* 5 pieces"):
        analyzer.run(ctx)
    empty = write_facts(tmp_path / "e.jsonl", [{"prompt": "The Colosseum is in", "subject": "Colosseum", "answer": ""}])
    analyzer = CausalTracing(build_config(CausalTracing, {"prompts": empty}))
    with pytest.raises(ConfigError, match="empty answer"):
        analyzer.validate(model.info, analyzer.cfg)


def test_encoder_and_bad_options_refused(tiny_models, tmp_path):
    bert = tiny_models["tiny_bert"]
    analyzer = CausalTracing()
    with pytest.raises(ConfigError, match="without a causal LM head"):
        analyzer.validate(bert.info, analyzer.cfg)
    info = tiny_models["tiny_llama"].info
    for options, message in (
        ({"kinds": ["mlp", "heads"]}, "kinds"),
        ({"target": "logit"}, "target"),
        ({"sigma": "layer"}, "sigma"),
        ({"samples": 0}, "samples"),
        ({"prompts": "facts.txt"}, ".jsonl"),
        ({"prompts": str(tmp_path / "missing.jsonl")}, "not found"),
    ):
        analyzer = CausalTracing(build_config(CausalTracing, options))
        with pytest.raises(ConfigError, match=message):
            analyzer.validate(info, analyzer.cfg)


# --- SmolLM2 ------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_knows_the_facts_and_pairs_exist(smollm2):
    facts = load_facts("factual")
    batch = smollm2.tokenize([f.prompt for f in facts])
    keep, column = torch.unique(batch.last_index, return_inverse=True)
    with torch.no_grad():
        logits = smollm2.forward(batch, logits_to_keep=keep).output
    top = logits[torch.arange(batch.size), column].argmax(-1).tolist()
    answers = [smollm2.token_id(f.answer, "answer")[0] for f in facts]  # all one token
    correct = np.mean([t == a for t, a in zip(top, answers, strict=True)])
    assert correct >= 0.8
    pairs = factual_pairs(smollm2.tokenizer)
    assert len(pairs) >= 100 and len({p.meta["relation"] for p in pairs}) >= 6
    ids, start, end = subject_span(smollm2.tokenizer, facts[0].prompt, facts[0].subject)
    assert smollm2.tokenizer.decode(ids[start:end]).strip() == facts[0].subject


@pytest.mark.slow
def test_smollm2_trace_equals_the_recorded_reference(smollm2):
    assert_matches_reference(smollm2, "smollm2")


@pytest.mark.slow
def test_smollm2_short_trace(smollm2, tmp_path):
    """A few short prompts (subject near the end: few positions to restore), 2 noise draws."""
    facts = [f for f in load_facts("factual") if f.relation == "capital_of_country"][:3]
    path = write_facts(tmp_path / "capitals.jsonl", [f.__dict__ for f in facts])
    result = run(smollm2, {"prompts": path, "samples": 2, "max_prompts": None})
    assert not result.failed_checks, result.checks
    assert result.metrics["mean_total_effect"] > 0.1
    assert result.metrics["fraction_correct"] == 1.0
    assert result.metrics["resid.peak_ie"] > 0
