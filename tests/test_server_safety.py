"""POST /predict/failure and POST /detect/anomaly on tiny_llama: the answers equal the engines'."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from interpsuite_plugins.safety.anomaly import AnomalyDetector  # noqa: E402
from interpsuite_plugins.safety.failure import FailurePredictor, extract  # noqa: E402

from interpsuite.server.app import create_app  # noqa: E402
from interpsuite.server.settings import ServerSettings  # noqa: E402
from interpsuite.testing import cached_model  # noqa: E402

PROMPTS = [
    "The cat sat on the", "One two three four", "The capital of France is", "Water boils at",
    "Once upon a time", "The sun rises in the", "Red, green and", "My favourite colour is",
    "In the beginning", "The quick brown fox", "She opened the door and", "The answer is",
    "Monday, Tuesday,", "A B C D", "Good morning, how", "The first man on the Moon was",
]  # fmt: skip
NORMAL = PROMPTS[:12]
QUERIES = ["Paris is a city in", "zq xj vv kk pp", "The river flows to the"]
IN_RUN = "data/failure_prediction/predictor"


def fit_predictor(model) -> FailurePredictor:
    """A predictor fitted cheaply: real features of 16 prompts, alternating labels."""
    data = extract(model, PROMPTS, ["output", "residual", "probe"], batch_size=8)
    labels = np.arange(len(PROMPTS)) % 2
    return FailurePredictor.fit(data, labels, model=model, families=["output", "residual", "probe"], c_grid=[1.0],
                                folds=2)  # fmt: skip


@pytest.fixture(scope="module")
def tiny():
    return cached_model("tiny_llama")


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory) -> dict:
    """runs/{old,new}/… predictors of tiny_llama (new written last), a newer tiny_gpt2 one in the runs,
    another tiny_gpt2 predictor in an artifact dir, and a saved detector (with token scores)."""
    root = tmp_path_factory.mktemp("safety")
    runs, artifacts = root / "runs", root / "artifacts"
    predictor = fit_predictor(tiny)
    old = predictor.save(runs / "old" / IN_RUN)
    new = predictor.save(runs / "new" / IN_RUN)
    gpt2 = fit_predictor(cached_model("tiny_gpt2"))
    newest = gpt2.save(runs / "gpt2" / IN_RUN)
    gpt2.save(artifacts / "gpt2-predictor")
    for folder, when in ((old, 1_000_000), (new, 2_000_000), (newest, 3_000_000)):
        os.utime(folder / "artifact.json", (when, when))
    detector = AnomalyDetector.fit(tiny, NORMAL, batch_size=8, max_length=128, token_scores=True)
    detector.save(artifacts / "detectors" / "normal")
    return {"root": root, "runs": runs, "artifacts": artifacts, "predictor": predictor, "detector": detector}


def make(root: Path, runs: Path, artifacts: Path, **overrides) -> TestClient:
    settings = ServerSettings(
        model="tiny_llama",
        runs_dir=runs,
        cache_dir=root / "cache",
        artifact_dirs=(artifacts,),
        exports_dir=root / "exports",
        draw_figures=False,
        request_timeout_s=120.0,
        **overrides,
    )
    return TestClient(create_app(settings, model=cached_model("tiny_llama")))


@pytest.fixture
def client(saved):
    with make(saved["root"], saved["runs"], saved["artifacts"]) as client:
        yield client


def error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and "\n" not in body["message"], body
    assert "Traceback" not in response.text
    return body["message"]


# --- failure prediction ------------------------------------------------------------------------------


def test_failure_probabilities_equal_the_engine(client, saved, tiny):
    response = client.post("/predict/failure", json={"texts": QUERIES, "predictor": f"new/{IN_RUN}", "top": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = saved["predictor"].score(tiny, QUERIES)
    assert [r["text"] for r in body["results"]] == QUERIES
    got = np.array([r["probability"] for r in body["results"]])
    assert np.allclose(got, expected.probability, rtol=0, atol=1e-6)
    for row, result in enumerate(body["results"]):
        top = expected.top_features(row, 4)
        assert [f["name"] for f in result["top_features"]] == [name for name, _, _ in top]
        assert np.allclose([f["contribution"] for f in result["top_features"]], [c for _, c, _ in top], atol=1e-9)
    info = body["predictor"]
    assert info["path"] == f"new/{IN_RUN}" and info["model"] == "tiny_llama"
    assert info["families"] == ["output", "residual", "probe"] and info["probe_layers"] == [1]
    assert info["feature_names"] == saved["predictor"].feature_names


def test_loaded_predictor_is_cached_per_folder(client):
    for _ in range(2):
        assert client.post("/predict/failure", json={"text": "Hello there", "predictor": f"old/{IN_RUN}"}).is_success
    cache = client.app.state.server.safety_artifacts
    assert len(cache._items) == 1


def test_default_is_the_newest_predictor_of_the_served_model(client):
    body = client.post("/predict/failure", json={"text": "The cat sat on the"}).json()
    assert body["predictor"]["path"] == f"new/{IN_RUN}"  # run "gpt2" is newer but for another model
    assert len(body["results"][0]["top_features"]) == 3


def test_no_predictor_anywhere_is_a_404_with_the_fix(saved, tmp_path):
    (tmp_path / "empty").mkdir()
    with make(tmp_path, tmp_path / "empty", saved["artifacts"]) as client:
        message = error(client.post("/predict/failure", json={"text": "Hi"}), 404, "not_found")
    assert "interpsuite +experiment=failure_prediction" in message and "tiny_llama" in message


def test_default_also_finds_runs_inside_an_artifact_dir(saved, tmp_path):
    (tmp_path / "empty").mkdir()
    saved["predictor"].save(tmp_path / "outputs" / "2026-12-01_07-00" / IN_RUN)
    with make(tmp_path, tmp_path / "empty", tmp_path / "outputs") as client:
        body = client.post("/predict/failure", json={"text": "The cat sat on the"}).json()
    assert body["predictor"]["path"] == f"2026-12-01_07-00/{IN_RUN}"


def test_predictor_of_another_model_is_refused(client):
    message = error(client.post("/predict/failure", json={"text": "Hi", "predictor": "gpt2-predictor"}), 400,
                    "config_error")  # fmt: skip
    assert "fitted on tiny_gpt2" in message and "tiny_llama" in message


def test_failure_request_errors(saved):
    with make(saved["root"], saved["runs"], saved["artifacts"], max_texts=2, max_text_chars=50) as client:
        post = client.post
        missing = post("/predict/failure", json={"text": "Hi", "predictor": "nope"})
        assert "no 'nope'" in error(missing, 404, "not_found")
        error(post("/predict/failure", json={"text": "Hi", "predictor": "../runs"}), 400, "bad_request")
        error(post("/predict/failure", json={"text": "Hi", "predictor": "/etc"}), 400, "bad_request")
        assert "empty" in error(post("/predict/failure", json={"text": "  "}), 400, "config_error")
        assert "text 1 is empty" in error(post("/predict/failure", json={"texts": ["a", ""]}), 400, "config_error")
        error(post("/predict/failure", json={"texts": ["a", "b", "c"]}), 413, "payload_too_large")
        error(post("/predict/failure", json={"text": "x" * 51}), 413, "payload_too_large")
        assert "colour" in error(post("/predict/failure", json={"text": "a", "colour": 1}), 422, "validation_error")
        error(post("/predict/failure", json={"text": "a", "texts": ["b"]}), 422, "validation_error")
        error(post("/predict/failure", json={"text": "a", "top": 0}), 422, "validation_error")
        not_a_predictor = post("/predict/failure", json={"text": "Hi", "predictor": "detectors/normal"})
        assert "failure_predictor" in error(not_a_predictor, 400, "config_error")


# --- anomaly detection -------------------------------------------------------------------------------


def test_anomaly_with_normal_texts_equals_the_engine(client, tiny):
    body = client.post("/detect/anomaly", json={"texts": QUERIES, "normal": NORMAL}).json()
    engine = AnomalyDetector.fit(tiny, NORMAL, batch_size=8, max_length=128)
    expected = engine.score(tiny, QUERIES, batch_size=8)
    assert np.allclose([r["score"] for r in body["results"]], expected.score.numpy(), rtol=0, atol=1e-9)
    assert [r["anomalous"] for r in body["results"]] == expected.flags.tolist()
    assert [r["threshold"] for r in body["results"]] == pytest.approx([expected.threshold] * 3, abs=1e-12)
    layers = body["results"][0]["layer_scores"]
    assert list(layers) == [str(layer) for layer in engine.layers]
    assert np.allclose(list(layers.values()), expected.standardized[0].numpy(), atol=1e-9)
    detector = body["detector"]
    assert detector["fitted_on_request"] is True and detector["path"] is None and detector["model"] == "tiny_llama"
    assert detector["n_train"] == engine.n_train and detector["n_calibration"] == engine.n_calibration
    assert "tokens" not in body["results"][0]


def test_anomaly_per_token_and_fit_options(client, tiny):
    request = {"text": QUERIES[1], "normal": NORMAL, "per_token": True, "fit": {"layers": [1], "fpr": 0.2}}
    result = client.post("/detect/anomaly", json=request).json()["results"][0]
    engine = AnomalyDetector.fit(tiny, NORMAL, batch_size=8, max_length=128, token_scores=True, layers=[1], fpr=0.2)
    expected = engine.score(tiny, [QUERIES[1]], per_token=True, batch_size=8)
    assert result["tokens"] == expected.tokens[0]
    assert np.allclose(result["token_scores"], expected.token_score[0].numpy(), atol=1e-9)
    assert result["token_anomalous"] == expected.token_flags[0].tolist()
    assert list(result["layer_scores"]) == ["1"]


def test_anomaly_with_a_saved_detector(client, saved, tiny):
    body = client.post(
        "/detect/anomaly", json={"texts": QUERIES, "detector": "detectors/normal", "per_token": True}
    ).json()
    expected = saved["detector"].score(tiny, QUERIES, per_token=True, batch_size=8)
    assert np.allclose([r["score"] for r in body["results"]], expected.score.numpy(), rtol=0, atol=1e-9)
    assert body["results"][2]["tokens"] == expected.tokens[2]
    assert body["detector"]["path"] == "detectors/normal" and body["detector"]["fitted_on_request"] is False
    assert body["detector"]["threshold"] == pytest.approx(saved["detector"].text_level.threshold, abs=1e-12)


def test_anomaly_request_errors(client, saved):
    post = client.post
    both = error(post("/detect/anomaly", json={"text": "a", "detector": "detectors/normal", "normal": NORMAL}), 400,
                 "config_error")  # fmt: skip
    assert "`detector`" in both and "`normal`" in both and "both" in both
    neither = error(post("/detect/anomaly", json={"text": "a"}), 400, "config_error")
    assert "`detector`" in neither and "`normal`" in neither and "neither" in neither
    assert "4 texts" in error(post("/detect/anomaly", json={"text": "a", "normal": NORMAL[:3]}), 400, "config_error")
    bad = error(post("/detect/anomaly", json={"text": "a", "normal": NORMAL, "fit": {"colour": 1}}), 400,
                "config_error")  # fmt: skip
    assert "colour" in bad and "layers" in bad
    bad_layer = post("/detect/anomaly", json={"text": "a", "normal": NORMAL, "fit": {"layers": [7]}})
    assert "out of range" in error(bad_layer, 400, "config_error")
    saved_fit = post("/detect/anomaly", json={"text": "a", "detector": "detectors/normal", "fit": {"fpr": 0.1}})
    assert "`fit`" in error(saved_fit, 400, "config_error")
    error(post("/detect/anomaly", json={"text": "a", "detector": "detectors/missing"}), 404, "not_found")
    error(post("/detect/anomaly", json={"text": "a", "detector": "../x"}), 400, "bad_request")
    assert "empty" in error(post("/detect/anomaly", json={"text": "a", "normal": NORMAL[:11] + [" "]}), 400,
                            "config_error")  # fmt: skip
    assert "per_token" in error(post("/detect/anomaly", json={"text": "a", "normal": NORMAL, "per_token": "maybe"}),
                                422, "validation_error")  # fmt: skip


def test_detector_without_token_scores_refuses_per_token(client, saved, tiny):
    AnomalyDetector.fit(tiny, NORMAL, batch_size=8).save(saved["artifacts"] / "detectors" / "plain")
    response = client.post("/detect/anomaly", json={"text": "a", "detector": "detectors/plain", "per_token": True})
    assert "token_scores" in error(response, 400, "config_error")
