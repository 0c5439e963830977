"""safety_concepts: shipped sets, reuse of the probing engines, exact steering numbers, bad input, the contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from interpsuite_plugins.probing.capture import pooled_features
from interpsuite_plugins.probing.concepts import diff_of_means
from interpsuite_plugins.probing.labelled import read_labelled
from interpsuite_plugins.safety.safety_concepts import (
    CONTINUATIONS_FILE,
    DATA_DIR,
    PROMPTS_FILE,
    SHIPPED,
    SafetyConcepts,
    continuation_metric,
    pair_batch,
)

from interpsuite.directions import read_direction
from interpsuite.errors import ConfigError
from interpsuite.models import load_model
from interpsuite.testing import assert_result_contract, run_analyzer

FAST = {"seeds": [0], "max_prompts": 2, "max_continuations": 2, "coefficients": [-2.0, 2.0]}


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny_llama")


def jsonl(tmp_path, name, rows):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_shipped_sets_are_balanced_and_large_enough():
    for concept, (file, positive) in SHIPPED.items():
        labelled = read_labelled(DATA_DIR / file, "sequence", name=concept)
        assert len(labelled.texts) >= 120 and len(set(labelled.texts)) == len(labelled.texts)
        assert labelled.labels.count(positive) == len(labelled.texts) // 2 and len(labelled.classes) == 2
    prompts = [json.loads(line) for line in PROMPTS_FILE.read_text().splitlines()]
    conts = [json.loads(line) for line in CONTINUATIONS_FILE.read_text().splitlines()]
    for concept in SHIPPED:
        assert any(p["concept"] == concept for p in prompts)
        classes = read_labelled(DATA_DIR / SHIPPED[concept][0], "sequence").classes
        assert {c["label"] for c in conts if c["concept"] == concept} == set(classes)


def test_continuation_metric_is_the_mean_log_prob_of_the_continuation_tokens(llama):
    prompts, conts = ["The cat sat", "A dog ran"], [" on the mat.", " away"]
    batch, targets = pair_batch(llama, prompts, conts)
    got = continuation_metric(batch, targets)(llama.forward(batch).output, batch)
    tok = llama.tokenizer
    for row, (prompt, cont) in enumerate([(p, c) for p in prompts for c in conts]):
        head, tail = tok(prompt)["input_ids"], tok(cont, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([head + tail])
        single = llama.tokenize([prompt + cont])  # only for its TokenBatch type; ids set below
        single.input_ids, single.attention_mask = ids, torch.ones_like(ids)
        logp = llama.forward(single).output[0].float().log_softmax(-1)
        want = np.mean([float(logp[len(head) + i - 1, t]) for i, t in enumerate(tail)])
        assert abs(float(got[row]) - want) < 1e-5


def test_analyzer_passes_the_contract(tiny_model, tmp_path):
    # the default steer: true on an encoder skips steering with a note (probes and directions only)
    result = run_analyzer(SafetyConcepts, tiny_model, options=FAST, run_dir=tmp_path, reraise=True)
    assert_result_contract(result, all_checks_passed=True, run_dir=tmp_path)
    curves = result.tables["probe_curves"]
    assert set(curves.task) == {"harmful_intent", "toxicity"}
    assert len(curves) == 2 * tiny_model.info.n_layers
    skipped = [note for note in result.summary["notes"] if note.startswith("steering skipped")]
    assert len(skipped) == (0 if tiny_model.info.is_causal else 1)
    if tiny_model.info.is_causal:
        steering = result.tables["steering"]
        assert sorted(set(steering.coefficient)) == [-2.0, 0.0, 2.0]
        for concept in SHIPPED:
            assert f"{concept}.coefficient_zero_matches_clean" in result.checks


def test_saved_direction_is_the_difference_of_means_at_the_steering_layer(llama):
    result = run_analyzer(SafetyConcepts, llama, options={**FAST, "steer_layer": 1}, reraise=True)
    labelled = read_labelled(DATA_DIR / "toxicity.jsonl", "sequence")
    feats, _ = pooled_features(llama, labelled.texts, ["blocks.1.resid_post"], "mean", batch_size=8)
    want = diff_of_means(feats[0], np.array([label == "toxic" for label in labelled.labels]))
    vector, meta = read_direction(result.summary["concepts"]["toxicity"]["direction_file"])
    assert meta["hook"] == "blocks.1.resid_post"
    np.testing.assert_allclose(vector.numpy(), want, rtol=1e-4, atol=1e-6)


def test_user_set_without_continuations_is_probed_and_not_steered(llama, tmp_path):
    rows = [{"text": f"good thing number {i}", "label": "pos"} for i in range(12)]
    rows += [{"text": f"bad thing number {i}", "label": "neg"} for i in range(12)]
    path = jsonl(tmp_path, "mine.jsonl", rows)
    options = {**FAST, "concepts": [], "path": path, "positive_label": "pos", "control": False}
    result = run_analyzer(SafetyConcepts, llama, options=options, reraise=True)
    assert set(result.tables["probe_curves"].task) == {"mine"}
    assert "steering" not in result.tables and "no steering" in result.summary["notes"][0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concepts": ["violence"]}, "unknown concept"),
        ({"concepts": []}, "no concepts"),
        ({"layers": [99]}, "out of range"),
        ({"steer_layer": 99}, "out of range"),
        ({"hook_point": "nope"}, "no per-block site"),
        ({"pooling": "max"}, "pooling"),
        ({"coefficients": []}, "coefficients"),
        ({"seeds": []}, "seeds"),
        ({"max_texts": 2}, "at least 3"),
    ],
)
def test_bad_options_are_refused_before_running(llama, options, message):
    with pytest.raises(ConfigError, match=message):
        run_analyzer(SafetyConcepts, llama, options={**FAST, **options})


def test_bad_files_are_refused_before_running(llama, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_class = jsonl(tmp_path, "one.jsonl", [{"text": f"t {i}", "label": "x"} for i in range(12)])
    no_label = jsonl(tmp_path, "nolabel.jsonl", [{"text": "t", "tag": "x"}])
    two = jsonl(tmp_path, "two.jsonl", [{"text": "a", "label": "p"}, {"text": "b", "label": "q"}] * 6)
    conts = jsonl(tmp_path, "c.jsonl", [{"concept": "toxicity", "text": "x"}])
    cases = [
        ({"concepts": [], "path": str(empty), "positive_label": "x"}, "no records"),
        ({"concepts": [], "path": one_class, "positive_label": "x"}, "exactly two"),
        ({"concepts": [], "path": no_label, "positive_label": "x"}, "no field 'label'"),
        ({"concepts": [], "path": one_class}, "positive_label"),
        ({"concepts": [], "path": two, "positive_label": "z"}, "not a class"),
        ({"continuations_path": conts}, "no text field 'label'"),
        ({"prompts_path": str(tmp_path / "missing.jsonl")}, "does not exist"),
    ]  # fmt: skip
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            run_analyzer(SafetyConcepts, llama, options={**FAST, **options})


@pytest.mark.slow
def test_smollm2_safety_concepts_checks_pass(smollm2, tmp_path):
    options = {**FAST, "layers": [2, 10], "steer_layer": 10, "max_texts": 40}
    result = run_analyzer(SafetyConcepts, smollm2, options=options, run_dir=tmp_path, reraise=True)
    assert_result_contract(result, all_checks_passed=True, run_dir=tmp_path)
    assert result.metrics["toxicity.best_accuracy"] > 0.7
