"""bias_probe: the WEAT and definitional-direction engine on fixed and synthetic vectors, and
the analyzer on tiny_llama (tables, checks, one capture pass, config errors)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from interpsuite.errors import ConfigError
from interpsuite.testing import assert_result_contract, cached_model, run_analyzer
from plugins.probing import bias_probe
from plugins.probing.bias import (
    association,
    definitional_direction,
    pair_margins,
    project,
    weat_effect_size,
    weat_permutation_test,
    weat_statistic,
)
from plugins.probing.bias_probe import BiasProbe, BiasProbeConfig, contextual_vectors, template_sentence

# a small fixed 2-D example: A near the x axis, B near the y axis
X2 = np.array([[1.0, 0.1], [0.9, 0.3], [2.0, 1.0]])
Y2 = np.array([[0.2, 1.0], [0.5, 0.5], [0.1, 3.0]])
A2 = np.array([[1.0, 0.0], [1.0, 0.2]])
B2 = np.array([[0.0, 1.0], [0.3, 1.0]])


def _cos(u, v):
    return sum(p * q for p, q in zip(u, v, strict=True)) / (math.hypot(*u) * math.hypot(*v))


def _s(w, attrs_a, attrs_b):
    return sum(_cos(w, a) for a in attrs_a) / len(attrs_a) - sum(_cos(w, b) for b in attrs_b) / len(attrs_b)


def _hand_effect(xs, ys, attrs_a, attrs_b):
    """Caliskan et al. 2017, written out with plain Python floats."""
    sx = [_s(w, attrs_a, attrs_b) for w in xs]
    sy = [_s(w, attrs_a, attrs_b) for w in ys]
    pooled = sx + sy
    mean = sum(pooled) / len(pooled)
    std = math.sqrt(sum((v - mean) ** 2 for v in pooled) / (len(pooled) - 1))
    return (sum(sx) / len(sx) - sum(sy) / len(sy)) / std


def _brute_force_p(xs, ys, attrs_a, attrs_b):
    words = list(xs) + list(ys)
    scores = [_s(w, attrs_a, attrs_b) for w in words]
    observed = sum(scores[: len(xs)]) - sum(scores[len(xs) :])
    count = total = 0
    for chosen in itertools.combinations(range(len(words)), len(xs)):
        stat = sum(scores[i] for i in chosen) - sum(scores[i] for i in range(len(words)) if i not in chosen)
        count += stat >= observed - 1e-12
        total += 1
    return count / total, total


# --- engine -----------------------------------------------------------------------------------


def test_effect_size_equals_hand_computation_2d():
    expected = _hand_effect(X2.tolist(), Y2.tolist(), A2.tolist(), B2.tolist())
    assert weat_effect_size(X2, Y2, A2, B2) == pytest.approx(expected, abs=1e-12)
    assert expected > 1.0  # X leans to A, Y to B: a large positive effect in this example
    stat = sum(_s(w, A2, B2) for w in X2) - sum(_s(w, A2, B2) for w in Y2)
    assert weat_statistic(X2, Y2, A2, B2) == pytest.approx(stat, abs=1e-12)
    assert association(X2[:1], A2, B2)[0] == pytest.approx(_s(X2[0], A2, B2), abs=1e-12)


def test_effect_size_is_scale_invariant_and_accepts_tensors():
    import torch

    scaled = weat_effect_size(3 * X2, 0.5 * Y2, 7 * A2, B2)
    assert scaled == pytest.approx(weat_effect_size(X2, Y2, A2, B2), abs=1e-12)
    as_tensors = weat_effect_size(*(torch.tensor(m, dtype=torch.float32) for m in (X2, Y2, A2, B2)))
    assert as_tensors == pytest.approx(weat_effect_size(X2, Y2, A2, B2), abs=1e-6)


def test_swapping_targets_negates_and_symmetric_sets_give_zero():
    assert weat_effect_size(Y2, X2, A2, B2) == pytest.approx(-weat_effect_size(X2, Y2, A2, B2), abs=1e-12)
    assert weat_effect_size(X2, X2, A2, B2) == 0.0
    # sets closed under the mirror (u, v) -> (v, u), with B the mirror of A: every set's mean s is 0
    closed_x = np.vstack([X2, X2[:, ::-1]])
    closed_y = np.vstack([Y2, Y2[:, ::-1]])
    assert abs(weat_effect_size(closed_x, closed_y, A2, A2[:, ::-1])) < 1e-12
    # A = B: no word is associated with either side
    assert weat_effect_size(X2, Y2, A2, A2) == 0.0


def test_exact_permutation_p_equals_brute_force():
    result = weat_permutation_test(X2, Y2, A2, B2, n_permutations=10000, seed=0)
    p, total = _brute_force_p(X2.tolist(), Y2.tolist(), A2.tolist(), B2.tolist())
    assert result.exact and result.n_permutations == total == math.comb(6, 3)
    assert result.p_value == pytest.approx(p, abs=1e-15)
    assert result.p_value == pytest.approx(1 / 20)  # the observed split is the most extreme of the 20
    rng = np.random.default_rng(5)
    x, y, a, b = (rng.normal(size=(n, 4)) for n in (4, 5, 3, 3))  # unequal |X| and |Y|
    result = weat_permutation_test(x, y, a, b, n_permutations=500, seed=1)
    p, total = _brute_force_p(x, y, a, b)
    assert result.exact and total == math.comb(9, 4) == result.n_permutations
    assert result.p_value == pytest.approx(p, abs=1e-15)


def test_random_permutation_p_is_reproducible_under_a_seed():
    rng = np.random.default_rng(0)
    x, y, a, b = (rng.normal(size=(10, 8)) for _ in range(4))  # C(20, 10) = 184756 partitions
    first = weat_permutation_test(x, y, a, b, n_permutations=2000, seed=3)
    again = weat_permutation_test(x, y, a, b, n_permutations=2000, seed=3)
    other = weat_permutation_test(x, y, a, b, n_permutations=2000, seed=4)
    assert not first.exact and first.n_permutations == 2000
    assert first == again
    assert other.p_value != first.p_value
    assert 0 < first.p_value <= 1 and first.p_value >= 1 / 2001
    exact = _brute_force_p(x[:5], y[:5], a, b)[0]  # the Monte-Carlo p agrees with the exact one
    sampled = weat_permutation_test(x[:5], y[:5], a, b, n_permutations=100, seed=0)  # 252 > 100: random
    assert not sampled.exact and abs(sampled.p_value - exact) < 0.15


def test_strong_association_gives_small_p_and_10k_permutations_are_fast():
    import time

    rng = np.random.default_rng(1)
    axis = np.zeros(16)
    axis[0] = 1.0
    a = 3 * axis + 0.3 * rng.normal(size=(8, 16))
    b = -3 * axis + 0.3 * rng.normal(size=(8, 16))
    x = 2 * axis + rng.normal(size=(12, 16))
    y = -2 * axis + rng.normal(size=(12, 16))
    started = time.perf_counter()
    result = weat_permutation_test(x, y, a, b, n_permutations=10000, seed=0)
    assert time.perf_counter() - started < 2.0
    assert result.effect_size > 1.5 and result.p_value < 0.001
    assert weat_permutation_test(y, x, a, b, n_permutations=10000, seed=0).p_value > 0.99


def test_definitional_direction_recovers_planted_direction_and_sign():
    rng = np.random.default_rng(0)
    d = 64
    planted = rng.normal(size=d)
    planted /= np.linalg.norm(planted)
    base = rng.normal(size=(12, d))
    scale = rng.uniform(1.0, 2.0, size=(12, 1))
    pairs_a = base + scale * planted + 0.02 * rng.normal(size=(12, d))
    pairs_b = base - scale * planted + 0.02 * rng.normal(size=(12, d))
    for method in ("pca", "mean"):
        direction = definitional_direction(pairs_a, pairs_b, method)
        assert np.linalg.norm(direction.vector) == pytest.approx(1.0)
        assert float(direction.vector @ planted) > 0.99  # cosine, and the sign points from b to a
        assert direction.explained_variance > 0.95
        assert (pair_margins(pairs_a, pairs_b, direction.vector) > 0).all()
        flipped = definitional_direction(pairs_b, pairs_a, method)
        assert float(flipped.vector @ planted) < -0.99
    # pairs with no common axis: the first component explains little
    noise = definitional_direction(rng.normal(size=(12, d)), rng.normal(size=(12, d)))
    assert noise.explained_variance < 0.4
    with pytest.raises(ValueError, match="method"):
        definitional_direction(pairs_a, pairs_b, "svd")


def test_project_gives_scalar_projections_onto_the_unit_direction():
    vectors = np.array([[1.0, 2.0], [-3.0, 0.5]])
    assert project(vectors, [2.0, 0.0]).tolist() == [1.0, -3.0]
    assert project(vectors, np.array([0.0, 1.0])).tolist() == [2.0, 0.5]


# --- shipped data -----------------------------------------------------------------------------


def test_shipped_word_lists_are_single_words_with_a_source():
    for name in ("definitional_pairs.json", "occupations.json", "templates.json", "weat.json"):
        data = json.loads((bias_probe.BIAS_DIR / name).read_text())
        assert data["source"] and data["how_made"]
    pairs = bias_probe.shipped_pairs()
    assert len(pairs) >= 10 and ["he", "she"] in pairs and ["man", "woman"] in pairs
    assert len(bias_probe.shipped_targets()) >= 40
    assert all(t.count("{}") == 1 for t in bias_probe.shipped_templates())
    tests = bias_probe.shipped_weat()
    assert {"career_family_gender_terms", "flowers_insects_pleasant"} <= set(tests)
    words = [w for pair in pairs for w in pair] + bias_probe.shipped_targets()
    words += [w for test in tests.values() for key in "XYAB" for w in test[key]]
    assert all(len(w.split()) == 1 and w == w.strip() for w in words)
    bias_probe.make_plan(BiasProbeConfig())  # the shipped data passes the analyzer's own checks


def test_template_sentence_places_the_word_in_the_slot():
    assert template_sentence("The {} said that", "nurse") == (["The", "nurse", "said", "that"], 1)
    assert template_sentence("{} is here", "he") == (["he", "is", "here"], 0)
    assert template_sentence("I met the {}.", "judge") == (["I", "met", "the", "judge", "."], 3)


# --- analyzer on tiny_llama -------------------------------------------------------------------

SMALL = {
    "pairs": [["he", "she"], ["man", "woman"], ["boy", "girl"], ["king", "queen"]],
    "targets": ["doctor", "nurse", "pilot", "chef", "judge"],
    "templates": ["This is {}", "The {} said that"],
    "weat_tests": ["career_family_gender_terms"],
    "n_permutations": 500,
}


def test_analyzer_on_tiny_llama_tables_and_checks():
    result = run_analyzer(BiasProbe, "tiny_llama", options=SMALL, reraise=True)
    assert_result_contract(result, all_checks_passed=True)
    n_layers = cached_model("tiny_llama").info.n_layers
    projections = result.tables["projections"]
    assert list(projections.columns) == ["layer", "word", "projection"]
    assert len(projections) == n_layers * len(SMALL["targets"])
    assert set(projections["word"]) == set(SMALL["targets"])
    weat = result.tables["weat"]
    assert {"layer", "test", "effect_size", "p_value", "n_permutations"} <= set(weat.columns)
    assert len(weat) == n_layers and set(weat["test"]) == {"career_family_gender_terms"}
    assert (weat["n_permutations"] == 500).all() and weat["p_value"].between(0, 1).all()
    assert len(result.tables["direction"]) == n_layers
    assert result.tables["direction"]["explained_variance"].between(0, 1).all()
    assert set(result.checks) == {"direction_sign", "weat_symmetry_error", "permutation_p_in_range"}
    assert "career_family_gender_terms.max_abs_effect_size" in result.metrics
    assert {"weat_effect_by_layer", "target_projections"} <= set(result.figures)
    # same seed, same p-values
    again = run_analyzer(BiasProbe, "tiny_llama", options=SMALL, reraise=True)
    assert again.tables["weat"]["p_value"].tolist() == weat["p_value"].tolist()


def test_analyzer_one_layer_mean_method_no_weat(tmp_path):
    options = {**SMALL, "layers": [-1], "weat_tests": [], "direction_method": "mean", "alignment": "last"}
    result = run_analyzer(BiasProbe, "tiny_llama", options=options, run_dir=tmp_path, reraise=True)
    assert_result_contract(result, all_checks_passed=True, run_dir=tmp_path)
    assert result.tables["weat"].empty and set(result.tables["projections"]["layer"]) == {1}
    assert set(result.checks) == {"direction_sign"}


def test_contextual_vectors_one_pass_equals_per_layer_capture():
    model = cached_model("tiny_llama")
    words, templates = ["he", "she", "doctor"], ["This is {}", "{} is here"]
    together = contextual_vectors(model, words, templates, [0, 1], "resid_post")
    alone = contextual_vectors(model, words, templates, [1], "resid_post")
    assert together[0].shape == (3, alone[0].shape[1])
    assert float((together[1] - alone[0]).abs().max()) < 1e-5
    single = contextual_vectors(model, ["doctor"], ["This is {}"], [1], "resid_post")[0][0]
    other = contextual_vectors(model, ["doctor"], ["{} is here"], [1], "resid_post")[0][0]
    assert float((together[1][2] - (single + other) / 2).abs().max()) < 1e-5  # the mean over templates


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"pairs": [["he", "she"]]}, "pairs"),
        ({"pairs": [["he", "she"], ["man"]]}, "pairs"),
        ({"pairs": [["he", "she"], ["young man", "woman"]]}, "pairs"),
        ({"pairs": [["he", "she"], ["", "woman"]]}, "pairs"),
        ({"targets": []}, "targets"),
        ({"targets": ["fire fighter"]}, "targets"),
        ({"templates": ["no slot here"]}, "templates"),
        ({"templates": ["{} and {}"]}, "templates"),
        ({"weat_tests": ["nope"]}, "weat_tests"),
        ({"n_permutations": 10}, "n_permutations"),
        ({"direction_method": "svd"}, "direction_method"),
        ({"alignment": "middle"}, "alignment"),
        ({"hook_point": "nowhere"}, "hook_point"),
        ({"layers": [7]}, "layers"),
    ],
)
def test_bad_options_raise_config_error_naming_the_option(options, option):
    with pytest.raises(ConfigError, match=rf"bias_probe\.{option}"):
        run_analyzer(BiasProbe, "tiny_llama", options=options, reraise=True)


def test_unknown_weat_test_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="career_family_gender_terms"):
        run_analyzer(BiasProbe, "tiny_llama", options={"weat_tests": ["nope"]}, reraise=True)


def test_weat_sets_need_two_words(monkeypatch):
    shipped = bias_probe.shipped_weat()
    broken = {"tiny": {**shipped["career_family_gender_terms"], "A": ["male"]}}
    monkeypatch.setattr(bias_probe, "shipped_weat", lambda: broken)
    with pytest.raises(ConfigError, match=r"bias_probe\.weat_tests: tiny set A has 1 word"):
        run_analyzer(BiasProbe, "tiny_llama", options={"weat_tests": ["tiny"]}, reraise=True)
