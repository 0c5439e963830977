"""cross_lingual: the retrieval/cosine engine on synthetic data, and the analyzer on tiny_llama."""

from __future__ import annotations

import json

import pytest
import torch

from interpsuite.errors import ConfigError
from interpsuite.testing import assert_result_contract, cached_model, run_analyzer
from plugins.probing import labelled
from plugins.probing.cross_lingual import COLUMNS, CrossLingual, CrossLingualConfig
from plugins.probing.crosslingual_metrics import (
    center_rows,
    pair_metrics,
    retrieval_accuracy,
    translation_cosines,
)

SENTENCES = [
    {"en": "The cat sleeps.", "fr": "Le chat dort.", "de": "Die Katze schläft."},
    {"en": "I like apples.", "fr": "J'aime les pommes.", "de": "Ich mag Äpfel."},
    {"en": "The sky is blue.", "fr": "Le ciel est bleu.", "de": "Der Himmel ist blau."},
    {"en": "We go to school.", "fr": "Nous allons à l'école.", "de": "Wir gehen zur Schule."},
    {"en": "She reads a book.", "fr": "Elle lit un livre.", "de": "Sie liest ein Buch."},
    {"en": "The water is cold.", "fr": "L'eau est froide.", "de": "Das Wasser ist kalt."},
    {"en": "My brother is tall.", "fr": "Mon frère est grand.", "de": "Mein Bruder ist groß."},
    {"en": "It is raining today.", "fr": "Il pleut aujourd'hui.", "de": "Es regnet heute."},
    {"en": "The house is old.", "fr": "La maison est vieille.", "de": "Das Haus ist alt."},
    {"en": "He drinks coffee.", "fr": "Il boit du café.", "de": "Er trinkt Kaffee."},
    {"en": "The dog runs fast.", "fr": "Le chien court vite.", "de": "Der Hund läuft schnell."},
    {"en": "Where is the station?", "fr": "Où est la gare ?", "de": "Wo ist der Bahnhof?"},
]


def write_parallel(path, rows):
    path.write_text("".join(json.dumps({"id": i, **row}, ensure_ascii=False) + "\n" for i, row in enumerate(rows)))
    return str(path)


# --- engine -------------------------------------------------------------------------------


def test_retrieval_identical_and_rotated_is_perfect():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(50, 16, generator=gen)
    assert retrieval_accuracy(a, a) == (1.0, 1.0)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen))
    # cosine is invariant under one orthogonal rotation of BOTH spaces (a against a @ q alone is
    # not: a_i . a_i q is no maximum), so a rotated copy retrieves itself perfectly ...
    assert retrieval_accuracy(a @ q, a @ q) == (1.0, 1.0)
    matched, _ = translation_cosines(a @ q, a @ q)
    assert matched == pytest.approx(1.0, abs=1e-9)
    # ... and rotating a noisy pair changes neither retrieval nor cosines
    b = a + 0.8 * torch.randn(50, 16, generator=gen)
    plain, rotated = pair_metrics(a, b), pair_metrics(a @ q, b @ q)
    assert rotated.retrieval_at_1 == pytest.approx(plain.retrieval_at_1)
    assert rotated.mrr == pytest.approx(plain.mrr)
    assert rotated.translation_cosine == pytest.approx(plain.translation_cosine, abs=1e-6)
    assert 0.3 < plain.retrieval_at_1 < 1.0  # the noise makes it a real test


def test_retrieval_of_independent_matrices_is_near_chance():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(50, 32, generator=gen)
    b = torch.randn(50, 32, generator=gen)
    at_1, mrr = retrieval_accuracy(a, b)
    assert at_1 < 0.2
    assert mrr < 0.4


def test_constant_features_score_chance_not_one():
    a = torch.ones(10, 4)
    at_1, _ = retrieval_accuracy(a, a.clone())  # every candidate ties: random tie-breaking
    assert at_1 == pytest.approx(0.1)


def test_translation_cosine_exceeds_non_translation_on_planted_data():
    gen = torch.Generator().manual_seed(2)
    meaning = torch.randn(40, 24, generator=gen)
    a = meaning + 0.5 * torch.randn(40, 24, generator=gen)
    b = meaning + 0.5 * torch.randn(40, 24, generator=gen)
    matched, unmatched = translation_cosines(a, b)
    assert matched > 0.6
    assert abs(unmatched) < 0.1
    assert matched > unmatched + 0.5
    metrics = pair_metrics(a, b)
    assert metrics.gap == pytest.approx(matched - unmatched)
    assert metrics.max_abs_cosine <= 1.0 + 1e-9
    assert metrics.retrieval_at_1 > 0.9


def test_centring_removes_a_language_offset():
    gen = torch.Generator().manual_seed(3)
    meaning = torch.randn(30, 16, generator=gen)
    # each language adds its own big constant vector: then a_i . b_j is decided by o_a . meaning_j
    # (the same j wins for every query), not by the shared meaning
    a = meaning + 50.0 * torch.randn(16, generator=gen)
    b = meaning + 50.0 * torch.randn(16, generator=gen)
    raw_at_1, _ = retrieval_accuracy(a, b)
    centred_at_1, _ = retrieval_accuracy(center_rows(a), center_rows(b))
    assert raw_at_1 < 0.2
    assert centred_at_1 == 1.0
    raw_gap = pair_metrics(a, b).gap
    assert pair_metrics(center_rows(a), center_rows(b)).gap > raw_gap


def test_engine_rejects_misaligned_inputs():
    with pytest.raises(ValueError, match="shape"):
        retrieval_accuracy(torch.zeros(4, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="at least 2"):
        translation_cosines(torch.zeros(1, 3), torch.zeros(1, 3))


# --- analyzer -----------------------------------------------------------------------------


def test_analyzer_on_tiny_llama(tmp_path):
    path = write_parallel(tmp_path / "par.jsonl", SENTENCES)
    options = {"path": path, "languages": ["en", "fr", "de"], "pivot": "en"}
    result = run_analyzer(CrossLingual, "tiny_llama", options=options, run_dir=tmp_path / "run", reraise=True)
    assert_result_contract(result, all_checks_passed=True, run_dir=tmp_path / "run")
    table = result.tables["cross_lingual"]
    assert list(table.columns) == list(COLUMNS)
    n_layers = cached_model("tiny_llama").info.n_layers
    assert len(table) == n_layers * 3 * 2  # layers x ordered pairs
    assert set(zip(table["source"], table["target"], strict=True)) == {
        (s, t) for s in ("en", "fr", "de") for t in ("en", "fr", "de") if s != t
    }
    assert table[["retrieval_at_1", "retrieval_at_1_raw", "mrr"]].stack().between(0, 1).all()
    assert (table["gap"] - (table["translation_cosine"] - table["non_translation_cosine"])).abs().max() < 1e-12
    assert result.checks["retrieval_self_check"].value == 0.0
    assert result.metrics["chance_level"] == pytest.approx(1 / len(SENTENCES))
    assert 0 <= result.metrics["retrieval_at_1.best"] <= 1
    assert result.metrics["retrieval_at_1.best_layer"] in range(n_layers)
    probe = result.tables["language_id"]
    assert len(probe) == n_layers and set(probe["task"]) == {"language_id"}
    assert 0 <= result.metrics["language_id.best_accuracy"] <= 1
    assert {"retrieval_by_layer", "cosine_by_layer", "language_id_by_layer"} <= set(result.figures)


def test_analyzer_without_probe_and_centring_last_pooling(tmp_path):
    path = write_parallel(tmp_path / "par.jsonl", SENTENCES)
    options = {"path": path, "languages": ["fr", "de"], "pivot": "de", "probe": False, "center": False}
    options |= {"pooling": "last", "layers": [-1], "max_sentences": 6}
    result = run_analyzer(CrossLingual, "tiny_llama", options=options, reraise=True)
    assert_result_contract(result, all_checks_passed=True)
    table = result.tables["cross_lingual"]
    assert len(table) == 2 and "language_id" not in result.tables
    assert (table["retrieval_at_1"] == table["retrieval_at_1_raw"]).all()
    assert result.metrics["chance_level"] == pytest.approx(1 / 6)


def test_csv_file_accepted(tmp_path):
    path = tmp_path / "par.csv"
    lines = ["en,es"] + [f'"{row["en"]}","{row["fr"]}"' for row in SENTENCES[:5]]
    path.write_text("\n".join(lines) + "\n")
    options = {"path": str(path), "languages": ["en", "es"], "probe": False, "layers": [0]}
    result = run_analyzer(CrossLingual, "tiny_llama", options=options, reraise=True)
    assert len(result.tables["cross_lingual"]) == 2


def _validate(options):
    from interpsuite.analyzer import build_config

    cfg = build_config(CrossLingual, options)
    return CrossLingual(cfg).validate(cached_model("tiny_llama").info, cfg)


def test_missing_language_fails_in_validate(tmp_path):
    rows = [dict(row) for row in SENTENCES]
    del rows[4]["de"]
    path = write_parallel(tmp_path / "par.jsonl", rows)
    with pytest.raises(ConfigError, match=r"cross_lingual: par\.jsonl:5: no de sentence"):
        _validate({"path": path, "languages": ["en", "fr", "de"]})
    with pytest.raises(ConfigError, match="no es sentence"):
        run_analyzer(CrossLingual, "tiny_llama", options={"path": path, "languages": ["en", "es"]}, reraise=True)


def test_bad_language_options(tmp_path):
    path = write_parallel(tmp_path / "par.jsonl", SENTENCES)
    with pytest.raises(ConfigError, match=r"languages.*at least 2"):
        _validate({"path": path, "languages": ["en"]})
    with pytest.raises(ConfigError, match=r"pivot: 'es' is not in languages"):
        _validate({"path": path, "languages": ["en", "fr"], "pivot": "es"})
    with pytest.raises(ConfigError, match="repeats"):
        _validate({"path": path, "languages": ["en", "en"]})
    with pytest.raises(ConfigError, match="pooling"):
        _validate({"path": path, "languages": ["en", "fr"], "pooling": "tokens"})
    with pytest.raises(ConfigError, match="does not exist"):
        _validate({"path": str(tmp_path / "nope.jsonl"), "languages": ["en", "fr"]})
    with pytest.raises(ConfigError, match="max_sentences"):
        _validate({"path": path, "languages": ["en", "fr"], "max_sentences": 1})
    with pytest.raises(ConfigError, match="language-id probe"):
        _validate({"path": path, "languages": ["en", "fr"], "max_sentences": 2})


def test_validate_resolves_layers(tmp_path):
    path = write_parallel(tmp_path / "par.jsonl", SENTENCES)
    cfg = _validate({"path": path, "languages": ["en", "fr"], "layers": [-1]})
    assert isinstance(cfg, CrossLingualConfig)
    assert cfg.layers == [cached_model("tiny_llama").info.n_layers - 1]


def test_shipped_parallel_set():
    path = labelled.DATA_DIR / "parallel.jsonl"
    if not path.is_file():
        pytest.skip("parallel.jsonl is still being written")
    rows = labelled.read_parallel(path, ("en", "fr", "de", "es"))
    assert len(rows) >= 100
