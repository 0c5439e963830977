"""max_activating, concept_neurons and activation_clustering: exact properties on tiny random
models (brute force, batch-size independence, context windows, HTML), honest verdicts on
random labels, bad inputs, and a known answer on SmolLM2."""

from __future__ import annotations

import html
import json
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from interpsuite_plugins.activation.clustering import ActivationClustering, Reservoir
from interpsuite_plugins.activation.concepts import (
    NOT_FOUND,
    ConceptNeurons,
    available_concepts,
    load_concept_set,
    split_indices,
)
from interpsuite_plugins.activation.max_activating import MaxActivating, window

from interpsuite.analyzer import RunContext, build_config
from interpsuite.data import Inputs
from interpsuite.errors import ConfigError
from interpsuite.models.sources import describe_model

# distinct first characters: no two texts share a prefix, so no exact ties between texts
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France.",
    "Hi",
    "a<b & c>d 'quoted' \"double\"",
    "Seven sleepy snakes slid south.",
    "1 + 2 = 3, said the calculator.",
    "xyz",
]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _run(analyzer_cls, model, options, texts=TEXTS, batch_size=3, max_length=None):
    cfg = build_config(analyzer_cls, options)
    analyzer = analyzer_cls(cfg)
    analyzer.validate(model.info, cfg)
    ctx = RunContext(model, Inputs(list(texts), "test"), batch_size=batch_size, max_length=max_length)
    ctx.show_progress = False
    return analyzer.run(ctx)


def _all_activations(model, texts, name):
    """Brute force: one unpadded forward per text -> list of [len, units]."""
    out = []
    for text in texts:
        batch = model.tokenize([text])
        out.append(model.forward(batch, capture=[name]).cache[name][0].float())
    return out


# --- max_activating ----------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gpt2", "tiny_bert"])
def test_max_activating_equals_brute_force(tiny_models, model_name):
    model = tiny_models[model_name]
    neurons = [[0, 3], [1, 17], [1, 100]]
    result = _run(MaxActivating, model, {"neurons": neurons, "top_k": 7})
    table = result.tables["max_activating"]
    for layer, unit in neurons:
        acts = _all_activations(model, TEXTS, f"blocks.{layer}.mlp.post")
        flat = [(float(a[pos, unit]), t, pos) for t, a in enumerate(acts) for pos in range(a.shape[0])]
        flat.sort(key=lambda item: -item[0])  # stable: earlier (text, position) first on ties
        got = table[(table["layer"] == layer) & (table["unit"] == unit)].sort_values("rank")
        assert len(got) == 7
        assert list(zip(got["text_id"], got["position"], strict=True)) == [(t, p) for _, t, p in flat[:7]]
        np.testing.assert_allclose(got["activation"], [v for v, _, _ in flat[:7]], rtol=1e-5, atol=1e-6)
    assert not result.failed_checks


def test_max_activating_most_variable_units_match_brute_force(tiny_models):
    model = tiny_models["tiny_gpt2"]
    result = _run(MaxActivating, model, {"layers": [1], "top_k_units": 3, "top_k": 2})
    acts = torch.cat(_all_activations(model, TEXTS, "blocks.1.mlp.post")).double()
    expected = torch.argsort(acts.var(dim=0, unbiased=False), descending=True)[:3].tolist()
    table = result.tables["max_activating"]
    assert list(dict.fromkeys(table["unit"])) == expected
    np.testing.assert_allclose(
        table.groupby("unit", sort=False)["variance"].first(), acts.var(0, unbiased=False)[expected], rtol=1e-6
    )


def test_max_activating_does_not_depend_on_batch_size(tiny_models):
    model = tiny_models["tiny_llama"]
    options = {"layers": [0, 1], "top_k_units": 3, "top_k": 6}
    tables = [_run(MaxActivating, model, options, batch_size=bs).tables["max_activating"] for bs in (1, 2, 7)]
    keys = ["layer", "unit", "rank", "text_id", "position", "token", "left_context", "right_context"]
    for table in tables[1:]:
        assert table[keys].equals(tables[0][keys])
        np.testing.assert_allclose(table["activation"], tables[0]["activation"], rtol=1e-5)


def test_context_windows_at_sequence_edges(tiny_models):
    """top_k larger than the token count: every token is listed, including both sequence ends.
    The byte-level tokenizer maps one ASCII character to one token, so windows are substrings."""
    model = tiny_models["tiny_gpt2"]
    texts = ["abcdefghij", "Hi", "klmnopq"]
    result = _run(MaxActivating, model, {"neurons": [[0, 5]], "top_k": 1000, "context": 3}, texts=texts)
    table = result.tables["max_activating"]
    assert len(table) == sum(len(t) for t in texts)
    for row in table.itertuples():
        text, pos = texts[row.text_id], row.position
        assert row.token == text[pos]
        assert row.left_context == text[max(0, pos - 3) : pos]
        assert row.right_context == text[pos + 1 : pos + 4]
    assert window(10, 0, 3) == (0, 4) and window(10, 9, 3) == (6, 10) and window(2, 1, 5) == (0, 2)


def test_ignore_first_token_leaves_position_zero_out(tiny_models):
    model = tiny_models["tiny_llama"]
    result = _run(MaxActivating, model, {"neurons": [[0, 9]], "top_k": 1000, "ignore_first_token": True})
    table = result.tables["max_activating"]
    assert (table["position"] > 0).all()
    assert len(table) == sum(len(model.tokenize([t]).tokens[0]) - 1 for t in TEXTS)


class _Checker(HTMLParser):
    VOID = {"meta", "br", "img", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "link", "img") and any(k in ("src", "href") for k, _ in attrs):
            self.external.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_html_is_valid_and_contains_every_context_token(tiny_models):
    model = tiny_models["tiny_llama"]
    result = _run(MaxActivating, model, {"neurons": [[0, 1], [1, 2]], "top_k": 1000, "context": 2})
    page = result.artifacts["max_activating.html"]
    assert page.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert checker.errors == [] and checker.stack == [] and checker.external == []
    assert "<b &" not in page  # raw text never leaks unescaped
    for row in result.tables["max_activating"].itertuples():
        for token in (row.token, *row.left_context, *row.right_context):  # one char = one token here
            assert f">{html.escape(token)}</span>" in page


def test_max_activating_bad_inputs():
    info = describe_model("tiny_llama")
    with pytest.raises(ConfigError, match=r"unit 128 .*d_mlp=128"):
        MaxActivating().validate(info, build_config(MaxActivating, {"neurons": [[0, 128]]}))
    with pytest.raises(ConfigError, match=r"d_model=64"):
        MaxActivating().validate(info, build_config(MaxActivating, {"neurons": [[1, 64]], "hook_point": "resid_post"}))
    with pytest.raises(ConfigError, match="layer 5 out of range"):
        MaxActivating().validate(info, build_config(MaxActivating, {"neurons": [[5, 0]]}))
    with pytest.raises(ConfigError, match=r"\[layer, unit\]"):
        MaxActivating().validate(info, build_config(MaxActivating, {"neurons": [[0, 1, 2]]}))
    with pytest.raises(ConfigError, match="hook_point"):
        MaxActivating().validate(info, build_config(MaxActivating, {"hook_point": "attn.pattern"}))


# --- concept_neurons -----------------------------------------------------------------------


class _PlantedNeuron:
    """A model whose unit 5 at blocks.1.mlp.post reads +100 on texts starting with 'yes'."""

    def __init__(self, model):
        self.model, self.info = model, model.info

    def tokenize(self, *args, **kwargs):
        return self.model.tokenize(*args, **kwargs)

    def forward(self, batch, capture=(), **kwargs):
        out = self.model.forward(batch, capture=capture, **kwargs)
        name = "blocks.1.mlp.post"
        if name in out.cache:
            for row, tokens in enumerate(batch.tokens):
                if "".join(tokens).startswith("yes"):
                    out.cache[name][row, :, 5] += 100.0
        return out


def _write_set(path, texts, labels):
    records = [json.dumps({"text": t, "label": int(y)}) for t, y in zip(texts, labels, strict=True)]
    path.write_text("".join(r + "\n" for r in records))
    return str(path)


def _concept_texts():
    return load_concept_set(build_config(ConceptNeurons, {"concept": "emotion"})).texts


def test_planted_concept_neuron_is_found_with_auc_one(tiny_models, tmp_path):
    texts = _concept_texts()
    labels = np.arange(len(texts)) % 2
    texts = [("yes " if y else "no ") + t for t, y in zip(texts, labels, strict=True)]
    path = _write_set(tmp_path / "planted.jsonl", texts, labels)
    result = _run(ConceptNeurons, _PlantedNeuron(tiny_models["tiny_llama"]), {"concept": path, "top_n": 5})
    top = result.tables["top_neurons"]
    assert (int(top.loc[0, "layer"]), int(top.loc[0, "unit"])) == (1, 5)
    assert top.loc[0, "test_auc"] == 1.0 and top.loc[0, "cohens_d"] > 0
    assert result.summary["found"] and NOT_FOUND not in result.summary["verdict"]
    assert not result.failed_checks


def test_negative_effect_neuron_auc_is_sign_corrected(tiny_models, tmp_path):
    texts = _concept_texts()
    labels = np.arange(len(texts)) % 2
    texts = [("yes " if not y else "no ") + t for t, y in zip(texts, labels, strict=True)]  # fires WITHOUT it
    path = _write_set(tmp_path / "negative.jsonl", texts, labels)
    result = _run(ConceptNeurons, _PlantedNeuron(tiny_models["tiny_llama"]), {"concept": path, "pooling": "max"})
    top = result.tables["top_neurons"]
    assert (int(top.loc[0, "layer"]), int(top.loc[0, "unit"])) == (1, 5)
    assert top.loc[0, "cohens_d"] < 0 and top.loc[0, "test_auc"] == 1.0


@pytest.mark.parametrize("model_name", ["tiny_gpt2", "tiny_bert"])
def test_random_labels_report_no_concept_neurons(tiny_models, tmp_path, model_name):
    texts = _concept_texts()
    labels = np.random.default_rng(123).permutation(np.arange(len(texts)) % 2)
    path = _write_set(tmp_path / "random.jsonl", texts, labels)
    result = _run(ConceptNeurons, tiny_models[model_name], {"concept": path})
    assert result.summary["verdict"].startswith(NOT_FOUND)
    assert result.metrics["concept_found"] == 0.0
    assert not result.failed_checks


def test_split_is_disjoint_stratified_and_seeded():
    labels = np.array([0] * 30 + [1] * 20)
    train, test = split_indices(labels, 0.3, seed=7)
    assert set(train).isdisjoint(test) and len(train) + len(test) == 50
    assert (labels[test] == 0).sum() == 9 and (labels[test] == 1).sum() == 6
    again = split_indices(labels, 0.3, seed=7)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_shipped_concept_sets_are_balanced_and_large_enough():
    assert {"emotion", "plural_nouns", "numbers", "negation"} <= set(available_concepts())
    for name in available_concepts():
        data = load_concept_set(build_config(ConceptNeurons, {"concept": name}))
        assert (data.labels == 1).sum() >= 40 and (data.labels == 0).sum() >= 40


def test_concept_bad_inputs(tmp_path):
    info = describe_model("tiny_llama")

    def check(options, pattern):
        with pytest.raises(ConfigError, match=pattern):
            ConceptNeurons().validate(info, build_config(ConceptNeurons, options))

    check({"concept": "colours"}, r"unknown concept 'colours'; available: \[.*negation.*\]")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    check({"concept": str(empty)}, "is empty")
    one = _write_set(tmp_path / "one.jsonl", ["a b", "c d", "e f"], [1, 1, 1])
    check({"concept": one}, "one class only")
    pos, neg = tmp_path / "pos.txt", tmp_path / "neg.txt"
    pos.write_text("I am happy.\nWhat joy!\n")
    neg.write_text("\n")
    check({"positive_path": str(pos), "negative_path": str(neg)}, "one class only")
    check({"positive_path": str(pos)}, "both positive_path and negative_path")
    check({"positive_path": str(pos), "negative_path": str(tmp_path / "missing.txt")}, "not found")
    check({"test_fraction": 1.0}, "test_fraction")
    check({"pooling": "median"}, "pooling")
    check({"layers": [9]}, "layer 9 out of range")
    check({"alpha": 0.0}, "alpha")


@pytest.mark.slow
def test_smollm2_negation_neurons_known_answer(smollm2):
    """Measured: negation (mean pooling, mlp.post) -> best held-out AUC 1.0 (top-1 L21 U1516, d -5.4);
    numbers 1.0, plural_nouns 1.0, emotion 0.995."""
    result = _run(ConceptNeurons, smollm2, {"concept": "negation"}, batch_size=16)
    assert result.summary["found"]
    assert result.metrics["best_test_auc"] >= 0.95
    assert result.metrics["top1_test_auc"] >= 0.9
    assert not result.failed_checks


@pytest.mark.slow
def test_smollm2_random_labels_report_no_concept_neurons(smollm2, tmp_path):
    """Random labels on SmolLM2: the best of the top-10 held-out AUCs still reaches 0.65-0.79 for
    some label draws (a max of noisy estimates); the permutation null keeps the verdict honest."""
    texts = _concept_texts()
    labels = np.random.default_rng(0).permutation(np.arange(len(texts)) % 2)
    path = _write_set(tmp_path / "random.jsonl", texts, labels)
    result = _run(ConceptNeurons, smollm2, {"concept": path}, batch_size=16)
    assert result.summary["verdict"].startswith(NOT_FOUND) and not result.summary["found"]


# --- activation_clustering ---------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_bert"])
def test_clustering_checks_and_tables(tiny_models, model_name):
    model = tiny_models[model_name]
    result = _run(ActivationClustering, model, {"n_clusters": 4})
    n_tokens = sum(len(b) for b in (model.tokenize([t]).tokens[0] for t in TEXTS))
    assert result.metrics["tokens_clustered"] == n_tokens
    assignments = result.tables["assignments"]
    assert len(assignments) == n_tokens and set(assignments["cluster"]) == set(range(4))
    assert result.tables["clusters"]["size"].sum() == n_tokens
    assert -1.0 <= result.metrics["silhouette"] <= 1.0
    assert not result.failed_checks


def test_clustering_clips_clusters_on_tiny_input(tiny_models):
    result = _run(ActivationClustering, tiny_models["tiny_gpt2"], {}, texts=["Hi"])
    assert result.summary["n_clusters"] == 2 and not result.failed_checks


def test_clustering_subsample_is_bounded(tiny_models):
    result = _run(ActivationClustering, tiny_models["tiny_llama"], {"max_tokens": 10, "n_clusters": 3})
    assert result.metrics["tokens_clustered"] == 10
    assert result.metrics["tokens_seen"] > 10 and not result.failed_checks


def test_clustering_ignore_first_token(tiny_models):
    model = tiny_models["tiny_llama"]
    result = _run(ActivationClustering, model, {"ignore_first_token": True, "n_clusters": 3})
    assignments = result.tables["assignments"]
    assert (assignments["position"] > 0).all()
    assert len(assignments) == sum(len(model.tokenize([t]).tokens[0]) - 1 for t in TEXTS)
    for row in assignments.itertuples():  # the token column matches the text (one byte = one token)
        assert row.token == TEXTS[row.text_id][row.position]
    assert not result.failed_checks


def test_reservoir_keeps_a_uniform_bounded_sample():
    counts = np.zeros(100)
    for seed in range(300):
        reservoir = Reservoir(10, seed)
        for start in range(0, 100, 7):
            rows = np.arange(start, min(start + 7, 100), dtype=float)[:, None]
            reservoir.add(rows, [(0, int(r), "") for r in rows[:, 0]])
        rows, meta = reservoir.sample()
        assert rows.shape == (10, 1) and [m[1] for m in meta] == rows[:, 0].astype(int).tolist()
        counts[rows[:, 0].astype(int)] += 1
    assert counts.min() > 10 and counts.max() < 60  # each row is kept with p = 0.1 (30 of 300 on average)


def test_clustering_bad_inputs():
    info = describe_model("tiny_llama")
    with pytest.raises(ConfigError, match="layer 2 out of range"):
        ActivationClustering().validate(info, build_config(ActivationClustering, {"layer": 2}))
    with pytest.raises(ConfigError, match="hook_point"):
        ActivationClustering().validate(info, build_config(ActivationClustering, {"hook_point": "logits"}))
    with pytest.raises(ConfigError, match=">= 1"):
        ActivationClustering().validate(info, build_config(ActivationClustering, {"n_clusters": 0}))
