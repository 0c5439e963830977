"""POST /train-sae against create_app on tiny_llama: train a small SAE, save it, load it, patch it.

The trainer's numbers are tested with the engine (tests/test_sae_*.py); here: the saved folder is
the SAE that was evaluated (its held-out explained variance is reproduced from the files), it
carries the model's fingerprint and loads through POST /load-sae, a patch on it changes the
logits, and every refusal (hook, limits, name, 409) comes before any training.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from interpsuite_plugins.sae.evaluation import evaluate_sae  # noqa: E402
from interpsuite_plugins.sae.files import load_sae  # noqa: E402

from interpsuite.artifacts import ModelFingerprint  # noqa: E402
from interpsuite.plugins import get_registry  # noqa: E402
from interpsuite.progress import Cancelled, CancelToken  # noqa: E402
from interpsuite.server.app import create_app  # noqa: E402
from interpsuite.server.routes import sae_training  # noqa: E402
from interpsuite.server.settings import ServerSettings  # noqa: E402
from interpsuite.testing import cached_model  # noqa: E402
from tests.server_support import error, no_traceback  # noqa: E402

HOOK = "blocks.1.resid_post"
WIDTH = 48
TOKENS = 1500
CORPUS = ["The cat sat on the mat.", "Paris is the capital of France.", "Hi there"]
PROMPT = "The quick brown fox jumps over"


@pytest.fixture(scope="module")
def registry():
    return get_registry()


@pytest.fixture
def runs(tmp_path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def client(tmp_path, registry, runs) -> TestClient:
    settings = ServerSettings(
        model="tiny_llama",
        runs_dir=runs,
        cache_dir=tmp_path / "cache",
        draw_figures=False,
        request_timeout_s=120.0,
        exports_dir=tmp_path / "exports",
    )
    with TestClient(create_app(settings, registry=registry, model=cached_model("tiny_llama"))) as client:
        client.event_hooks = {"request": [], "response": [no_traceback]}
        yield client


def train(client: TestClient, **options) -> dict:
    body = {"hook": HOOK, "width": WIDTH, "tokens": TOKENS, "load": False, **options}
    response = client.post("/train-sae", json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(("architecture", "k"), [("topk", 8), ("relu", None), ("jumprelu", None)])
def test_the_saved_sae_is_the_one_evaluated(client, runs, architecture, k):
    model = cached_model("tiny_llama")
    body = train(client, architecture=architecture, k=k, name="small")
    assert body["path"] == "saes/small" and body["hook"] == HOOK and body["width"] == WIDTH
    assert body["architecture"] == architecture and body["k"] == k and body["loaded"] is None
    assert sorted(p.name for p in (runs / "saes").iterdir()) == ["small"]  # no partial folder left
    assert "saes" not in {run["id"] for run in client.get("/runs").json()["runs"]}  # the SAE folder is not a run

    sae = load_sae(runs / "saes" / "small")
    assert (sae.cfg.hook, sae.cfg.width, sae.cfg.d_in, sae.cfg.architecture) == (HOOK, WIDTH, 64, architecture)
    if k is not None:
        assert sae.cfg.k == k
    assert sae.fingerprint == ModelFingerprint.of(model)

    summary = body["train"]
    assert summary["corpus"] == "python_docs" and summary["epochs"] == 1
    assert summary["batch_size"] == TOKENS // 200 and summary["steps"] == TOKENS // summary["batch_size"]
    assert summary["tokens"] == summary["steps"] * summary["batch_size"]
    assert summary["tokens_recorded"] >= TOKENS
    texts = sae_training.corpus("python_docs")
    _, _, _, held = sae_training.choose_texts(model, texts, TOKENS, 0, "python_docs")
    again = evaluate_sae(model, sae.eval(), held, HOOK, max_length=sae_training.MAX_LENGTH)
    held_out = summary["held_out"]
    assert held_out["texts"] == len(held) and held_out["tokens"] == again.n_tokens >= 256
    assert held_out["explained_variance"] == pytest.approx(again.explained_variance, abs=1e-9)
    assert held_out["fvu"] == pytest.approx(1.0 - held_out["explained_variance"], abs=1e-12)
    assert held_out["l0"] == pytest.approx(again.l0, abs=1e-9)
    assert held_out["ce_loss_recovered"] == pytest.approx(again.ce_loss_recovered, abs=1e-9)


def test_train_then_load_and_patch(client):
    body = train(client, architecture="topk", k=8, name="live", load=True)
    loaded = body["loaded"]
    assert loaded["path"] == "saes/live" and loaded["hook"] == HOOK and loaded["width"] == WIDTH
    assert client.get("/sae").json() == loaded

    again = client.post("/load-sae", json={"path": body["path"], "corpus": CORPUS})
    assert again.status_code == 200, again.text
    assert {k: again.json()[k] for k in ("hook", "width", "d_in", "architecture")} == {
        "hook": HOOK,
        "width": WIDTH,
        "d_in": 64,
        "architecture": "topk",
    }
    clean = client.post("/inference", json={"text": PROMPT, "k": 5}).json()
    assert clean["top"] == clean["clean_top"] and clean["patches"] == []
    patch = client.post("/patch", json={"feature": 0, "kind": "add", "value": 500.0})
    assert patch.status_code == 201, patch.text
    patched = client.post("/inference", json={"text": PROMPT, "k": 5}).json()
    assert patched["patches"] == [patch.json()["id"]]
    assert patched["clean_top"] == clean["top"]
    assert patched["top"] != patched["clean_top"]


def test_defaults_and_a_second_request_with_the_same_name(client, runs):
    model = cached_model("tiny_llama")
    body = train(client, hook=None, width=32, k=4, tokens=600)
    hook = f"blocks.{model.info.n_layers // 2}.resid_post"
    assert body["hook"] == hook
    name = body["path"].removeprefix("saes/")
    assert name.startswith(f"sae-{hook}-32-") and (runs / "saes" / name / "artifact.json").is_file()
    second = train(client, hook=None, width=32, k=4, tokens=600)["path"]  # within the same second, often
    assert second != body["path"] and second.startswith(f"saes/sae-{hook}-32-")

    train(client, width=32, k=4, tokens=600, name="dup")
    before = (runs / "saes" / "dup" / "artifact.json").read_bytes()
    message = error(
        client.post("/train-sae", json={"width": 32, "k": 4, "tokens": 600, "name": "dup"}), 409, "conflict"
    )
    assert "saes/dup" in message
    assert (runs / "saes" / "dup" / "artifact.json").read_bytes() == before


def test_a_small_corpus_is_passed_over_several_epochs(client):
    summary = train(client, corpus="english", tokens=3000, k=8)["train"]
    assert summary["corpus"] == "english" and summary["epochs"] > 1
    assert summary["epochs"] == math.ceil(3000 / summary["tokens_recorded"])
    assert summary["tokens"] == summary["steps"] * summary["batch_size"] == 3000 // 15 * 15
    message = error(
        client.post("/train-sae", json={"corpus": "english", "tokens": 200_000, "width": WIDTH, "load": False}),
        400,
        "config_error",
    )
    assert "passes over the english corpus" in message


def test_refusals_before_training(client, runs):
    def refused(status: int, code: str, **options) -> str:
        body = {"hook": HOOK, "width": WIDTH, "tokens": TOKENS, **options}
        return error(client.post("/train-sae", json=body), status, code)

    assert "blocks.99.resid_post" in refused(400, "config_error", hook="blocks.99.resid_post")
    refused(400, "config_error", hook="nope")
    assert "d_model or d_mlp" in refused(400, "config_error", hook="blocks.1.attn.z")
    assert "200,000" in refused(413, "payload_too_large", tokens=200_001)
    assert "16,384" in refused(413, "payload_too_large", width=16_385)
    refused(422, "validation_error", tokens=10)
    refused(422, "validation_error", width=0)
    refused(422, "validation_error", architecture="gated")
    refused(422, "validation_error", corpus="web")
    refused(422, "validation_error", surprise=1)
    assert "sae.k" in refused(400, "config_error", k=WIDTH + 1)
    for name in ("../up", "a/b", ".hidden", "x" * 129, ""):
        assert "one folder name" in refused(400, "bad_request", name=name)
    assert not (runs / "saes").exists() or not any((runs / "saes").iterdir())


def test_cancelled_work_stops_between_batches():
    token = CancelToken()
    progress = sae_training._checking(token)
    seen = []
    with pytest.raises(Cancelled, match="activation_store"):
        for item in progress(range(5), "activation_store", 5):
            seen.append(item)
            if item == 1:
                token.cancel()
    assert seen == [0, 1]


def test_a_cancelled_request_saves_nothing(tmp_path):
    token = CancelToken()
    token.cancel()
    body = sae_training.TrainSAERequest(hook=HOOK, width=WIDTH, tokens=TOKENS, k=8, load=False)
    target = tmp_path / "saes" / "never"
    with pytest.raises(Cancelled):
        sae_training.train_and_save(cached_model("tiny_llama"), body, HOOK, target, token)
    assert not target.parent.exists() or not any(target.parent.iterdir())
