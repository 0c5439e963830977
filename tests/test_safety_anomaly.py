"""Anomaly detection (issue 12): the engine's statistics on synthetic data, the detector on tiny
models (round trips, refusals, bad input), the analyzer's contract and the detect-anomaly command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from interpsuite_plugins.probing.capture import pooled_features
from interpsuite_plugins.safety.anomaly import (
    AnomalyDetector,
    LayerStats,
    Moments,
    gaussians_from_moments,
    ledoit_wolf_from_moments,
)
from interpsuite_plugins.safety.anomaly_detection import (
    FILE_SETS,
    SHIPPED_NORMAL,
    fpr_tolerance,
    generated_sets,
    read_texts,
)
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

from interpsuite.cli import main
from interpsuite.errors import ConfigError
from interpsuite.models import load_model
from interpsuite.testing import assert_result_contract, cached_model, run_analyzer

NORMAL = [
    f"{subject} {verb} the {thing} on {day}."
    for subject in ("The teacher", "My aunt", "A farmer", "The pilot", "Our neighbour")
    for verb in ("painted", "repaired", "sold", "carried")
    for thing, day in (("fence", "Monday"), ("boat", "Friday"))
]  # 40 ordinary sentences


def _moments(x: np.ndarray, batch: int = 7) -> Moments:
    moments = Moments(x.shape[1])
    for start in range(0, len(x), batch):
        moments.update(torch.from_numpy(x[start : start + batch]))
    return moments


def _level(x: np.ndarray) -> LayerStats:
    mean, whiten, _ = gaussians_from_moments([_moments(x)], [0], [], "texts")
    return LayerStats(mean, whiten, None, torch.zeros(1), torch.ones(1), 0.0)


# ---------------------------------------------------------------- statistics on synthetic data


@pytest.mark.parametrize(("n", "d"), [(500, 8), (60, 40), (25, 100)])
def test_streamed_ledoit_wolf_equals_sklearn(n, d):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)) * rng.uniform(0.2, 5.0, size=d) + 1000.0  # large mean: the shift matters
    x[:, 0] += 3 * x[:, 1]  # correlated features
    cov, shrinkage, _ = ledoit_wolf_from_moments(_moments(x))
    reference = LedoitWolf().fit(x)
    assert shrinkage == pytest.approx(reference.shrinkage_, rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(cov.numpy(), reference.covariance_, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(_moments(x).mean.numpy(), reference.location_, rtol=1e-12)


def test_mahalanobis_distances_follow_chi_square():
    """With enough samples the shrunk estimate is close to the truth and d^2 ~ chi-square(d).

    (For an ill-conditioned covariance the shrinkage lifts the smallest eigenvalues and d^2 is
    biased low; that is the estimator's known trade-off, not tested here.)"""
    rng = np.random.default_rng(0)
    d = 12
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    mixing = rotation * rng.uniform(0.5, 2.0, size=d)  # well conditioned: shrinkage ~0.002 at n=20000
    train = rng.normal(size=(20000, d)) @ mixing.T + 5.0
    fresh = rng.normal(size=(5000, d)) @ mixing.T + 5.0
    scores = _level(train).raw([torch.from_numpy(fresh)], k=1)[:, 0].numpy()
    assert scores.mean() == pytest.approx(d, rel=0.03)  # chi-square mean = degrees of freedom
    assert scores.var() == pytest.approx(2 * d, rel=0.1)  # and variance 2d


def test_shifted_data_is_detected():
    rng = np.random.default_rng(1)
    d = 20
    level = _level(rng.normal(size=(2000, d)))
    normal = level.raw([torch.from_numpy(rng.normal(size=(300, d)))], k=1)[:, 0].numpy()
    shifted = level.raw([torch.from_numpy(rng.normal(size=(300, d)) + 2.0)], k=1)[:, 0].numpy()
    labels = np.r_[np.zeros(300), np.ones(300)]
    assert roc_auc_score(labels, np.r_[normal, shifted]) > 0.99


def test_fewer_samples_than_dimensions_is_shrunk_and_said():
    rng = np.random.default_rng(2)
    notes: list[str] = []
    _, whiten, shrinkage = gaussians_from_moments([_moments(rng.normal(size=(40, 576)))], [3], notes, "texts")
    assert torch.isfinite(whiten).all() and 0 < shrinkage[0] <= 1
    assert "n=40 < d=576" in notes[0] and "Ledoit-Wolf shrinkage" in notes[0] and "invertible" in notes[0]


def test_fpr_tolerance_shrinks_with_more_texts():
    assert fpr_tolerance(0.05, 1000, 1000) < fpr_tolerance(0.05, 60, 60) < 0.25


# ---------------------------------------------------------------- the detector on tiny models


@pytest.fixture(scope="module")
def llama():
    return cached_model("tiny_llama")


@pytest.fixture(scope="module")
def fitted(llama):
    return AnomalyDetector.fit(llama, NORMAL, fpr=0.1, token_scores=True, batch_size=8)


def test_capture_equals_probing_pooled_features(llama):
    from interpsuite_plugins.safety.anomaly import _capture

    hooks = ["blocks.0.resid_post", "blocks.1.resid_post"]
    for pooling in ("mean", "last"):
        ours = list(_capture(llama, NORMAL[:5], hooks, pooling, batch_size=2, max_length=128, keep_tokens=True,
                             progress=lambda it, desc: it, desc=""))  # fmt: skip
        reference, _ = pooled_features(llama, NORMAL[:5], hooks, pooling, batch_size=2)
        for layer in range(2):
            got = torch.cat([part.pooled[layer] for part in ours]).float()
            torch.testing.assert_close(got, reference[layer], rtol=1e-5, atol=1e-5)


def test_fit_reports_small_normal_set(fitted):
    assert fitted.n_train == 30 and fitted.n_calibration == 10
    assert any("n=30 < d=64" in note and "Ledoit-Wolf shrinkage" in note for note in fitted.notes)


def test_scores_shapes_flags_and_tokens(fitted, llama):
    texts = ["The teacher painted the boat on Monday.", "}}}}{{{{ ]]]] 0x0x0x"]
    scores = fitted.score(llama, texts, per_token=True)
    assert scores.per_layer.shape == (2, 2) and scores.score.shape == (2,)
    assert torch.equal(scores.flags, scores.score > fitted.text_level.threshold)
    assert scores.score[1] > scores.score[0]
    lengths = [len(t) for t in scores.tokens]
    assert [len(s) for s in scores.token_score] == lengths == [len(t) for t in llama.tokenize(texts).tokens]
    table = scores.table(texts)
    assert list(table.columns) == ["text", "score", "flag", "layer_0", "layer_1"]


def test_scores_do_not_depend_on_batching_or_order(fitted, llama):
    """score() sorts texts by length into batches; every result must come back to its own text."""
    texts = ["A very long sentence about the farmer who sold the boat on a Friday in May.", "Hi", "}}}} ####", "Ok."]
    together = fitted.score(llama, texts, per_token=True, batch_size=2)
    for i, text in enumerate(texts):
        alone = fitted.score(llama, [text], per_token=True)
        torch.testing.assert_close(together.per_layer[i], alone.per_layer[0], rtol=1e-4, atol=1e-3)
        assert together.tokens[i] == alone.tokens[0]
        torch.testing.assert_close(together.token_score[i], alone.token_score[0], rtol=1e-4, atol=1e-3)


def test_save_load_round_trip_gives_identical_scores(fitted, llama, tmp_path):
    texts = [*NORMAL[:3], "zzzz 1234 ####"]
    before = fitted.score(llama, texts, per_token=True)
    loaded = AnomalyDetector.load(fitted.save(tmp_path / "det"), model=llama)
    after = loaded.score(llama, texts, per_token=True)
    assert torch.equal(before.per_layer, after.per_layer) and torch.equal(before.score, after.score)
    assert torch.equal(before.flags, after.flags) and before.threshold == after.threshold
    for a, b in zip(before.token_score, after.token_score, strict=True):
        assert torch.equal(a, b)
    assert loaded.summary()["notes"] == fitted.notes


def test_knn_round_trip_and_bounded_bank(llama, tmp_path):
    detector = AnomalyDetector.fit(llama, NORMAL, method="knn", k=3, max_bank=10)
    assert detector.text_level.bank.shape == (2, 10, 64)
    assert any("uniform sample of 10 of the 30" in note for note in detector.notes)
    texts = [NORMAL[0], "@@@@ !!!! ????"]
    loaded = AnomalyDetector.load(detector.save(tmp_path / "knn"), model=llama)
    assert torch.equal(detector.score(llama, texts).score, loaded.score(llama, texts).score)


def test_loading_for_another_model_is_refused(fitted, tmp_path):
    path = fitted.save(tmp_path / "det")
    with pytest.raises(ConfigError, match="tiny_gpt2"):
        AnomalyDetector.load(path, model=cached_model("tiny_gpt2"))
    other_weights = load_model("tiny_llama", seed=1)
    with pytest.raises(ConfigError, match="weights"):
        AnomalyDetector.load(path, model=other_weights)
    detector = AnomalyDetector.load(path)  # no model: loads; scoring checks it
    with pytest.raises(ConfigError, match="fit a new one"):
        detector.score(other_weights, ["hello there"])


def test_corrupt_files_are_refused(fitted, tmp_path):
    path = fitted.save(tmp_path / "det")
    tensors = path / "tensors.safetensors"
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="checksum"):
        AnomalyDetector.load(path)
    tensors.write_bytes(data)
    meta = path / "artifact.json"
    good = meta.read_text()
    meta.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        AnomalyDetector.load(path)
    record = json.loads(good)
    del record["spec"]["layers"]
    meta.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="spec is incomplete"):
        AnomalyDetector.load(path)
    record = json.loads(good)
    record["kind"] = "failure_predictor"
    meta.write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="not .anomaly_detector."):
        AnomalyDetector.load(path)


def test_bad_input_is_one_clear_error(llama, fitted):
    with pytest.raises(ConfigError, match="text 2 is empty"):
        AnomalyDetector.fit(llama, [*NORMAL[:2], "   ", *NORMAL[2:]])
    with pytest.raises(ConfigError, match="text 1 is empty"):
        fitted.score(llama, ["fine", ""])
    with pytest.raises(ConfigError, match="give at least"):
        AnomalyDetector.fit(llama, NORMAL[:3])
    with pytest.raises(ConfigError, match="method"):
        AnomalyDetector.fit(llama, NORMAL, method="lof")
    with pytest.raises(ConfigError, match="fpr"):
        AnomalyDetector.fit(llama, NORMAL, fpr=1.5)
    with pytest.raises(ConfigError, match="per-token scores need method mahalanobis"):
        AnomalyDetector.fit(llama, NORMAL, method="knn", token_scores=True)
    with pytest.raises(ConfigError, match="layer 7 out of range"):
        AnomalyDetector.fit(llama, NORMAL, layers=[7])
    knn = AnomalyDetector.fit(llama, NORMAL, method="knn", k=2)
    with pytest.raises(ConfigError, match="token_scores=True"):
        knn.score(llama, ["hello"], per_token=True)


# ---------------------------------------------------------------- shipped sets, analyzer, command


def test_shipped_sets_are_large_enough_and_clean(llama):
    normal = read_texts(SHIPPED_NORMAL, "text", "normal")
    assert len(normal) >= 300 and len(set(normal)) == len(normal)
    for path in FILE_SETS.values():
        assert len(read_texts(path, "text", path.name)) >= 60
    sets = generated_sets(llama.tokenizer, 60, seed=0)
    assert all(len(texts) == 60 and all(t.strip() for t in texts) for texts in sets.values())
    assert sets == generated_sets(llama.tokenizer, 60, seed=0)


def test_analyzer_result_contract(tiny_model, tmp_path):
    options = {"max_normal": 100, "max_ood": 15, "n_generated": 15, "fpr": 0.1}
    result = run_analyzer("anomaly_detection", tiny_model, options=options, run_dir=tmp_path, reraise=True)
    assert_result_contract(result, all_checks_passed=True, run_dir=tmp_path)
    assert result.checks["reload_max_abs_score_diff"].value == 0.0
    assert set(result.tables["auroc_summary"]["set"]) == {
        "code", "languages", "unusual_chars", "random_tokens", "repeated_tokens",
    }  # fmt: skip
    for name in ("code", "random_tokens"):
        assert 0.0 <= result.metrics[f"auroc.{name}.aggregated"] <= 1.0
    assert (tmp_path / "data" / "anomaly_detection" / "detector" / "artifact.json").is_file()
    assert {"auroc_heatmap", "score_histograms"} <= set(result.figures)


def test_analyzer_validates_before_weights():
    with pytest.raises(ConfigError, match="ood_sets"):
        run_analyzer("anomaly_detection", "tiny_llama", options={"ood_sets": ["poems"]})
    with pytest.raises(ConfigError, match="normal_path"):
        run_analyzer("anomaly_detection", "tiny_llama", options={"normal_path": "/no/such/file.txt"})
    with pytest.raises(ConfigError, match="give at least"):
        run_analyzer("anomaly_detection", "tiny_llama", options={"max_normal": 4})


def test_command_prints_scores(fitted, tmp_path, capsys):
    path = fitted.save(tmp_path / "det")
    texts = tmp_path / "texts.txt"
    texts.write_text("The pilot sold the fence on Friday.\n\n}}}} 0x0x ####\n", encoding="utf-8")
    assert main(["detect-anomaly", "--detector", str(path), "--file", str(texts)]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0] == "index\tscore\tflag\ttext" and len(lines) == 3
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == ["1", "3"]  # line numbers; the empty line 2 is skipped
    expected = fitted.score(cached_model("tiny_llama"), ["The pilot sold the fence on Friday.", "}}}} 0x0x ####"])
    assert [float(r[1]) for r in rows] == pytest.approx(expected.score.tolist(), rel=1e-5)
    assert [r[2] for r in rows] == ["anomalous" if f else "normal" for f in expected.flags.tolist()]
    assert "skipped 1 empty line" in err
    assert main(["detect-anomaly", "--detector", str(path), "--text", "hello", "--text", "world"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_command_errors_are_one_line(tmp_path, capsys):
    assert main(["detect-anomaly", "--detector", str(tmp_path / "missing"), "--text", "hello"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a folder" in err
    assert main(["detect-anomaly", "--detector", str(tmp_path), "--text", ""]) == 2
    assert "empty" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_small_normal_set_and_code(smollm2):
    normal = read_texts(SHIPPED_NORMAL, "text", "normal")[:40]
    detector = AnomalyDetector.fit(smollm2, normal, layers=[5, 15, 25], max_length=64)
    assert any("n=30 < d=576" in note for note in detector.notes)
    code = read_texts(FILE_SETS["code"], "text", "code")[:20]
    test = read_texts(SHIPPED_NORMAL, "text", "normal")[40:60]
    scores = detector.score(smollm2, [*test, *code])
    labels = np.r_[np.zeros(20), np.ones(20)]
    assert roc_auc_score(labels, scores.score.numpy()) > 0.9
