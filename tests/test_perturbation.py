"""LIME and SHAP token attributions (plugins/attribution/perturbation.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from interpsuite.errors import ConfigError
from plugins.attribution.perturbation import fixed_positions, lime_token_scores, logit_score_fn, shap_token_scores

TEXT = "The quick brown fox"
IOI = "When Mary and John went to the store, John gave a drink to"


def _ids(model, text):
    return model.tokenizer(text)["input_ids"]


def _additive(weights):
    """score = sum of w[token] over the tokens present (the mask token, if any, has weight 0)."""
    calls = []

    def score(seqs):
        calls.append(len(seqs))
        return np.array([sum(weights[t] for t in s) for s in seqs], dtype=np.float64)

    return score, calls


@pytest.fixture(scope="module")
def tiny_llama(tiny_models):
    return tiny_models["tiny_llama"]


def test_one_score_per_token_and_deterministic(tiny_model):
    ids = _ids(tiny_model, TEXT)
    if tiny_model.info.is_causal:
        score = logit_score_fn(tiny_model, target_id=5, contrast_id=7)
    else:  # encoders: any caller-given scorer (logit_score_fn is for causal LMs only)
        score = _additive(np.linspace(-1, 1, tiny_model.info.vocab_size))[0]
    lime_a = lime_token_scores(tiny_model, ids, score, n_samples=60, seed=3)
    lime_b = lime_token_scores(tiny_model, ids, score, n_samples=60, seed=3)
    shap_a, err_a = shap_token_scores(tiny_model, ids, score, max_evals=80, seed=3)
    shap_b, err_b = shap_token_scores(tiny_model, ids, score, max_evals=80, seed=3)
    assert lime_a.shape == shap_a.shape == (len(ids),)
    np.testing.assert_array_equal(lime_a, lime_b)
    np.testing.assert_array_equal(shap_a, shap_b)
    assert err_a == err_b and err_a < 1e-9
    for pos in fixed_positions(tiny_model, ids):
        assert lime_a[pos] == 0 and shap_a[pos] == 0
    if tiny_model.info.is_causal:
        assert fixed_positions(tiny_model, ids) == [0]  # the attention sink is never perturbed
    assert np.abs(lime_a).sum() > 0 and np.abs(shap_a).sum() > 0


def test_seed_changes_the_sample(tiny_llama):
    ids = _ids(tiny_llama, TEXT)
    score = logit_score_fn(tiny_llama, target_id=5)
    a = lime_token_scores(tiny_llama, ids, score, n_samples=40, seed=0)
    b = lime_token_scores(tiny_llama, ids, score, n_samples=40, seed=1)
    assert not np.array_equal(a, b)


def test_numpy_global_rng_untouched(tiny_llama):
    ids = _ids(tiny_llama, TEXT)
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    shap_token_scores(tiny_llama, ids, _additive(np.ones(300))[0], max_evals=80, seed=9)
    assert np.random.rand() == expected


@pytest.mark.parametrize("mask", [None, 257])  # delete tokens, or replace them by the pad id (weight 0)
def test_additive_score_recovered(tiny_llama, mask):
    ids = _ids(tiny_llama, TEXT)
    weights = np.random.RandomState(1).randn(tiny_llama.info.vocab_size)
    weights[257] = 0.0
    score, calls = _additive(weights)
    free = [i for i in range(len(ids)) if i not in fixed_positions(tiny_llama, ids)]
    true = weights[np.array(ids)][free]

    stats: dict = {}
    lime = lime_token_scores(tiny_llama, ids, score, n_samples=300, seed=0, mask_token_id=mask, stats=stats)
    assert spearmanr(lime[free], true).statistic > 0.99
    assert len(calls) == 1 and stats["n_evaluated"] <= stats["n_samples"] == 300  # one batched call

    calls.clear()
    stats = {}
    shap, err = shap_token_scores(tiny_llama, ids, score, max_evals=200, seed=0, mask_token_id=mask, stats=stats)
    np.testing.assert_allclose(shap[free], true, atol=1e-9)  # additive game: every permutation is exact
    assert err < 1e-9
    assert len(calls) == 1  # dry run + one batched score_fn call for every distinct sequence
    assert stats["n_permutations"] == 200 // (2 * len(free) + 1)


def test_short_texts(tiny_llama):
    score = logit_score_fn(tiny_llama, target_id=5)
    two = _ids(tiny_llama, "Hi")
    assert len(two) == 2
    lime = lime_token_scores(tiny_llama, two, score, n_samples=30)
    shap, err = shap_token_scores(tiny_llama, two, score, max_evals=10)
    assert lime[0] == shap[0] == 0
    # one free token: its SHAP value is exactly f(x) - f(first token only)
    assert shap[1] == pytest.approx(score([two])[0] - score([two[:1]])[0], abs=1e-6)
    assert err < 1e-9
    assert np.sign(lime[1]) == np.sign(shap[1])
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        lime_token_scores(tiny_llama, two[:1], score)
    with pytest.raises(ConfigError, match="at least 2 tokens"):
        shap_token_scores(tiny_llama, two[:1], score)
    with pytest.raises(ConfigError, match="empty"):
        shap_token_scores(tiny_llama, [], score)


def test_logit_score_fn_batches_and_pads(tiny_llama, tiny_models):
    ids = _ids(tiny_llama, TEXT)
    seqs = [ids, ids[:3], ids[:1], ids[:7]]
    batched = logit_score_fn(tiny_llama, 5, contrast_id=9, batch_size=3)(seqs)
    for seq, value in zip(seqs, batched, strict=True):
        batch = tiny_llama.tokenize([TEXT])
        batch.input_ids, batch.attention_mask = batch.input_ids[:, : len(seq)], batch.attention_mask[:, : len(seq)]
        logits = tiny_llama.forward(batch).output[0, -1]
        assert value == pytest.approx(float(logits[5] - logits[9]), abs=1e-4)
    with pytest.raises(ConfigError, match="encoder"):
        logit_score_fn(tiny_models["tiny_bert"], 5)
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        logit_score_fn(tiny_llama, 10**9)


def test_ioi_smollm2(smollm2):
    ids = _ids(smollm2, IOI)
    tokens = [smollm2.tokenizer.decode([t]) for t in ids]
    mary, john = smollm2.to_single_token(" Mary"), smollm2.to_single_token(" John")
    # Logit difference " Mary" - " John": the name that is not repeated is the answer.
    score = logit_score_fn(smollm2, mary, contrast_id=john)
    lime = lime_token_scores(smollm2, ids, score, n_samples=100, seed=0)
    shap, err = shap_token_scores(smollm2, ids, score, max_evals=100, seed=0)
    assert tokens[int(np.argmax(lime))] == " Mary"
    assert tokens[int(np.argmax(shap))] == " Mary"
    assert err < 1e-6
    # Raw logit of " Mary": LIME still ranks " Mary" first.
    lime_logit = lime_token_scores(smollm2, ids, logit_score_fn(smollm2, mary), n_samples=100, seed=0)
    assert tokens[int(np.argmax(lime_logit))] == " Mary"
