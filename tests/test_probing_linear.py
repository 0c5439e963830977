"""`linear_probe` and `concept_direction` on tiny models: word alignment equals a hand
computation, planted labels are found and random ones are not, directions hand off to
`steering`, and every bad labelled set fails before weights load with one line."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from interpsuite_plugins.probing.capture import word_features, word_spans, word_token_map
from interpsuite_plugins.probing.labelled import SHIPPED, load_task

from interpsuite import InterpretabilityPipeline
from interpsuite.directions import read_direction
from interpsuite.errors import ConfigError
from interpsuite.testing import assert_result_contract, run_analyzer


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _planted(n: int = 40, seed: int = 0) -> list[dict]:
    """Texts whose label is visible in their letters: a tiny random model can represent it."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        label = "zed" if i % 2 else "ay"
        letters = "zyxw" if label == "zed" else "abcd"
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 5))) for _ in range(rng.randint(3, 6))]
        records.append({"text": " ".join(words), "label": label})
    return records


def test_word_token_map_follows_character_spans():
    spans = word_spans(["ab", "c", "def"])
    assert spans == [(0, 2), (3, 4), (5, 8)]
    # tokens: "a", "b", " c" (with its space), "de", "f", a special token (0, 0)
    offsets = [(0, 1), (1, 2), (2, 4), (5, 7), (7, 8), (0, 0)]
    assert word_token_map(offsets, spans) == [[0, 1], [2], [3, 4]]


@pytest.mark.parametrize("alignment", ["mean", "first", "last"])
def test_word_features_equal_a_hand_computation(tiny_model, alignment):
    sentences = [["The", "cat", "sat", "."], ["A", "dog", "ran", "far", "away"]]
    hook = "blocks.1.resid_post"
    got = word_features(tiny_model, sentences, [hook], alignment, batch_size=2)
    assert got.dropped == 0 and got.words == [w for s in sentences for w in s]
    expected = []
    for words in sentences:
        text = " ".join(words)
        acts = tiny_model.forward(tiny_model.tokenize([text]), capture=[hook]).cache[hook][0].float()
        offsets = tiny_model.token_offsets([text])[0]
        for positions in word_token_map(offsets, word_spans(words)):
            chosen = {"first": positions[:1], "last": positions[-1:]}.get(alignment, positions)
            expected.append(acts[chosen].mean(0))
    assert torch.allclose(got.features[0], torch.stack(expected), atol=1e-5)


def test_a_planted_label_is_found_and_random_labels_stay_at_chance(tiny_model, tmp_path):
    records = _planted(60)
    planted = _write_jsonl(tmp_path / "planted.jsonl", records)
    shuffled = [dict(r, label=random.Random(i).choice(["p", "q"])) for i, r in enumerate(records)]
    noise = _write_jsonl(tmp_path / "noise.jsonl", shuffled)
    options = {"tasks": [], "seeds": [0, 1, 2]}
    found = run_analyzer("linear_probe", model=tiny_model, texts=["x"], options={**options, "path": planted})
    assert_result_contract(found)
    table = found.tables["probe_curves"]
    assert list(table["task"].unique()) == ["planted"]
    assert len(table) == tiny_model.info.n_layers
    assert table["accuracy"].max() >= 0.95
    assert (table["accuracy_ci_low"] <= table["accuracy"]).all() and (
        table["accuracy"] <= table["accuracy_ci_high"]
    ).all()
    assert found.checks["planted.one_pass_vs_single_capture_rel_error"].passed
    random_labels = run_analyzer("linear_probe", model=tiny_model, texts=["x"], options={**options, "path": noise})
    accuracy = random_labels.tables["probe_curves"]["accuracy"]
    assert accuracy.mean() < 0.75  # 12 test texts per seed: chance 0.5 with a wide spread


def test_token_level_probe_with_control_task_and_mdl(tiny_model, tmp_path):
    rng = random.Random(1)
    vocab = {"cat": "NOUN", "dog": "NOUN", "runs": "VERB", "sleeps": "VERB", "the": "DET", "a": "DET"}
    records = []
    for _ in range(30):
        words = [rng.choice(["the", "a"]), rng.choice(["cat", "dog"]), rng.choice(["runs", "sleeps"])]
        records.append({"words": words, "tags": [vocab[w] for w in words]})
    path = _write_jsonl(tmp_path / "tags.jsonl", records)
    result = run_analyzer(
        "linear_probe",
        model=tiny_model,
        texts=["x"],
        options={"tasks": [], "path": path, "level": "token", "seeds": [0, 1], "mdl": True},
    )
    assert_result_contract(result)
    table = result.tables["probe_curves"]
    assert {"control_accuracy", "selectivity", "mdl_bits", "mdl_compression"} <= set(table.columns)
    assert np.allclose(table["selectivity"], table["accuracy"] - table["control_accuracy"])
    # tags are a function of the word here, so the control (random label per type) is learnable too
    assert result.checks["tags.control_above_chance"].passed
    assert result.summary["tasks"]["tags"]["n_examples"] == 90
    assert "tags_by_layer" in result.figures


def test_shipped_sets_are_well_formed():
    for task in SHIPPED:
        labelled = load_task(task)
        assert len(labelled.texts) >= 100, task
        assert len(labelled.classes) >= 2, task
    pos = load_task("pos")
    assert all(len(w) == len(t) for w, t in zip(pos.words, pos.tags, strict=True))
    language = load_task("language_id")
    assert language.classes == ["de", "en", "es", "fr"]
    assert language.groups[:4] == [0, 0, 0, 0]  # translations of one sentence share a split group


@pytest.mark.parametrize(
    ("records", "options", "message"),
    [
        (
            [{"text": "a b", "lbl": "x"}] * 10,
            {},
            r"bad.jsonl:1: no field 'label' \(fields: lbl, text\); set label_field",
        ),
        ([{"text": f"t{i}", "label": "x"} for i in range(10)], {}, "single class"),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], {}, "at least 3 groups"),
        (
            [{"words": ["a", "b"], "tags": ["X"]}] * 10,
            {"level": "token"},
            r"bad.jsonl:1: 1 tags for 2 words; give exactly one tag per word",
        ),
        ([{"words": "a b", "tags": ["X", "Y"]}] * 10, {"level": "token", "words_field": "w"}, "no field 'w'"),
    ],
)
def test_bad_labelled_sets_fail_before_weights_load(tmp_path, records, options, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", records)
    pipeline = InterpretabilityPipeline(
        model="tiny_llama",
        data=["x"],
        analyzers={"linear_probe": {"tasks": [], "path": path, **options}},
        output_dir=tmp_path / "run",
        sinks=["rundir"],
        progress=False,
    )
    with pytest.raises(ConfigError, match=message):
        pipeline.validate()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tasks": ["sentimnet"]}, "unknown probing task 'sentimnet'; shipped tasks: sentiment"),
        ({"pooling": "max"}, "linear_probe.pooling: 'max' is not one of mean, last"),
        ({"hook_points": ["resid_side"]}, "has no per-block site 'resid_side'"),
        ({"layers": [7]}, "layer 7 out of range"),
        ({"c_grid": [0]}, "c_grid"),
        ({"tasks": [], "path": None}, "no probing task"),
    ],
)
def test_bad_probe_options(tiny_model, options, message):
    with pytest.raises(ConfigError, match=message):
        run_analyzer("linear_probe", model=tiny_model, texts=["x"], options=options)


def test_concept_direction_methods_and_the_steering_hand_off(tiny_model, tmp_path):
    path = _write_jsonl(tmp_path / "planted.jsonl", _planted(40))
    result = run_analyzer(
        "concept_direction",
        model=tiny_model,
        texts=["x"],
        options={"task": None, "path": path, "positive": "zed"},
        run_dir=tmp_path / "run",
    )
    assert_result_contract(result, all_checks_passed=True)
    directions = result.tables["directions"]
    assert set(directions["method"]) == {"diff_means", "lda", "probe"}
    assert (directions["projection_gap_std"] > 0).all()  # every direction points to the positive class
    index = json.loads((tmp_path / "run" / "data" / "concept_direction" / "planted" / "directions.json").read_text())
    assert index["positive"] == "zed" and len(index["directions"]) == 3 * tiny_model.info.n_layers
    best = result.summary["best_layer"]
    saved, meta = read_direction(result.summary["files"]["diff_means"])
    assert meta["hook"] == f"blocks.{best}.resid_post" and meta["method"] == "diff_means"
    # the diff-of-means file is exactly the class-mean difference of the captured features
    records = _planted(40)
    hook = f"blocks.{best}.resid_post"
    pooled = []
    for record in records:
        acts = tiny_model.forward(tiny_model.tokenize([record["text"]]), capture=[hook]).cache[hook][0].float()
        pooled.append(acts.mean(0))
    pooled = torch.stack(pooled)
    is_zed = torch.tensor([r["label"] == "zed" for r in records])
    by_hand = pooled[is_zed].mean(0) - pooled[~is_zed].mean(0)
    assert torch.allclose(saved, by_hand, atol=1e-4)
    if not tiny_model.info.is_causal:
        return  # steering needs a causal LM
    # steering loads it by path: its hook picks the layer, and the added vector is the file's
    steered = run_analyzer(
        "steering",
        model=tiny_model,
        texts=["a b c"],
        options={"direction_path": result.summary["files"]["diff_means"], "n_generate": 0, "coefficients": [0.0, 1.0]},
    )
    assert steered.status == "ok", steered.error
    assert steered.summary["hook"] == hook
    assert steered.metrics["direction_norm"] == pytest.approx(float(saved.norm()), rel=1e-5)


def test_concept_direction_needs_a_positive_class_on_multiclass_sets(tiny_model):
    with pytest.raises(ConfigError, match="set positive=<label>"):
        run_analyzer("concept_direction", model=tiny_model, texts=["x"], options={"task": "tense"})
    with pytest.raises(ConfigError, match="positive: 'present tense' is not a label"):
        run_analyzer(
            "concept_direction", model=tiny_model, texts=["x"], options={"task": "tense", "positive": "present tense"}
        )
