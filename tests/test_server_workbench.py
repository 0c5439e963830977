"""The SAE workbench API (REST + WebSocket) against create_app on tiny_llama.

The engine's numbers are tested in tests/test_workbench.py and tests/test_patch_files.py; here:
the JSON shapes of docs/server.md, the status codes, path confinement, and that a patch change
(REST or WebSocket) pushes new logits to every connection with a live prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from interpsuite_plugins.sae.model import SAEConfig, SparseAutoencoder  # noqa: E402

from interpsuite.artifacts import ModelFingerprint  # noqa: E402
from interpsuite.hooks import Intervention  # noqa: E402
from interpsuite.plugins import get_registry  # noqa: E402
from interpsuite.server.app import create_app  # noqa: E402
from interpsuite.server.settings import ServerSettings  # noqa: E402
from interpsuite.testing import cached_model  # noqa: E402
from tests.server_support import error, no_traceback  # noqa: E402

HOOK = "blocks.1.resid_post"
WIDTH = 48
CORPUS = ["The cat sat on the mat.", "Paris is the capital of France.", "Hi there"]
PROMPT = "The quick brown fox jumps over"


def make_sae(d_in: int = 64, hook: str = HOOK, seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=WIDTH, architecture="relu", hook=hook), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(WIDTH, generator=generator) * 0.5 - 0.3)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator) * 0.3)
    return sae.eval()


@pytest.fixture(scope="module")
def registry():
    return get_registry()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = tmp_path / "artifacts"
    make_sae().save(folder / "saes" / "a", fingerprint=ModelFingerprint.of(cached_model("tiny_llama")))
    make_sae(d_in=32).save(folder / "saes" / "narrow")
    make_sae().save(folder / "saes" / "gpt2", fingerprint=ModelFingerprint.of(cached_model("tiny_gpt2")))
    return folder


@pytest.fixture
def client(tmp_path, registry, artifacts) -> TestClient:
    settings = ServerSettings(
        model="tiny_llama",
        runs_dir=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        draw_figures=False,
        request_timeout_s=120.0,
        artifact_dirs=(artifacts,),
        exports_dir=tmp_path / "exports",
    )
    with TestClient(create_app(settings, registry=registry, model=cached_model("tiny_llama"))) as client:
        client.event_hooks = {"request": [], "response": [no_traceback]}
        yield client


def load(client: TestClient, path: str = "saes/a") -> dict:
    response = client.post("/load-sae", json={"path": path, "corpus": CORPUS})
    assert response.status_code == 200, response.text
    return response.json()


def test_without_an_sae(client):
    assert error(client.get("/sae"), 404, "not_found")
    assert "POST /load-sae" in error(client.get("/features"), 409, "conflict")
    error(client.post("/patch", json={"feature": 1, "kind": "add", "value": 1.0}), 409, "conflict")
    error(client.get("/feature/1/details"), 409, "conflict")
    error(client.post("/export-sae", json={"name": "x", "format": "patches"}), 409, "conflict")
    body = client.post("/inference", json={"text": PROMPT, "k": 3}).json()
    assert body["top"] == body["clean_top"] and len(body["top"]) == 3
    assert body["patches"] == [] and body["active_features"] == [] and body["text"] == PROMPT
    assert set(body) >= {"tokens", "latency_ms"}
    error(client.post("/inference", json={"text": " "}), 400, "config_error")
    error(client.post("/inference", json={"text": "x" * 20_001}), 413, "payload_too_large")
    error(client.post("/inference", json={"text": PROMPT, "k": 0}), 422, "validation_error")


def test_load_sae_and_browse_features(client):
    info = load(client)
    assert {k: info[k] for k in ("hook", "width", "d_in", "architecture", "path", "n_features")} == {
        "hook": HOOK,
        "width": WIDTH,
        "d_in": 64,
        "architecture": "relu",
        "path": "saes/a",
        "n_features": WIDTH,
    }
    assert 0 < info["n_alive"] <= WIDTH and info["corpus_tokens"] > 0
    assert client.get("/sae").json() == info
    page = client.get("/features", params={"offset": 2, "limit": 3, "sort": "index"}).json()
    assert page["total"] == WIDTH and page["offset"] == 2
    assert [f["id"] for f in page["features"]] == [2, 3, 4]
    assert set(page["features"][0]) == {"id", "density", "max_activation", "mean_active", "top_tokens", "top_logits"}
    dense = client.get("/features", params={"limit": WIDTH}).json()["features"]
    assert [f["density"] for f in dense] == sorted((f["density"] for f in dense), reverse=True)
    top = dense[0]
    details = client.get(f"/feature/{top['id']}/details").json()
    assert set(details) >= {"id", "density", "max_activation", "contexts", "logits", "histogram"}
    assert details["contexts"] and set(details["contexts"][0]) == {"tokens", "acts", "focus"}
    assert len(details["logits"]["top"]) == 10 and len(details["logits"]["top"][0]) == 2
    found = client.get("/features", params={"q": top["top_tokens"][0], "limit": WIDTH}).json()
    assert top["id"] in [f["id"] for f in found["features"]]
    assert "width 48" in error(client.get(f"/feature/{WIDTH}/details"), 404, "not_found")
    error(client.get("/features", params={"sort": "random"}), 422, "validation_error")


def test_load_sae_refusals(client):
    error(client.post("/load-sae", json={"path": "saes/none"}), 404, "not_found")
    error(client.post("/load-sae", json={"path": "../artifacts/saes/a"}), 400, "bad_request")
    error(client.post("/load-sae", json={"path": "/etc"}), 400, "bad_request")
    assert "d_in is 32" in error(client.post("/load-sae", json={"path": "saes/narrow"}), 400, "config_error")
    assert "tiny_gpt2" in error(client.post("/load-sae", json={"path": "saes/gpt2"}), 400, "config_error")
    error(client.post("/load-sae", json={"path": "saes/a", "corpus": []}), 400, "config_error")
    error(client.get("/sae"), 404, "not_found")  # nothing was loaded by the refusals


def test_patches_over_rest(client):
    load(client)
    response = client.post("/patch", json={"feature": 3, "kind": "set", "value": 5.0, "enabled": True})
    assert response.status_code == 201
    assert response.json() == {"id": "p1", "feature": 3, "kind": "set", "value": 5.0, "enabled": True}
    again = client.post("/patch", json={"feature": 3, "kind": "add", "value": 40.0}).json()
    assert again == {"id": "p1", "feature": 3, "kind": "add", "value": 40.0, "enabled": True}
    assert client.post("/patch", json={"feature": 7, "kind": "scale", "value": 0.0}).json()["id"] == "p2"
    assert client.patch("/patch/p2", json={"value": 2.0}).json()["value"] == 2.0
    assert client.post("/patch/p2/toggle").json()["enabled"] is False
    assert client.post("/patch/p2/toggle", json={"enabled": None}).json()["enabled"] is True
    assert client.post("/patch/p2/toggle", json={"enabled": False}).json()["enabled"] is False
    assert [p["id"] for p in client.get("/patches").json()["patches"]] == ["p1", "p2"]

    body = client.post("/inference", json={"text": PROMPT, "k": 5}).json()
    assert body["patches"] == ["p1"] and body["top"] != body["clean_top"]
    model = cached_model("tiny_llama")  # the patched top token, by hand: x + 40 W_dec[3] at the hook point
    batch = model.tokenize([PROMPT])
    x = model.forward(batch, capture=[HOOK]).cache[HOOK]
    sae = client.app.state.server.live_hub.workbench().sae
    out = model.forward(batch, interventions=[Intervention(HOOK, "replace", value=x + 40.0 * sae.W_dec[3])]).output
    assert body["top"][0]["id"] == int(out[0, -1].argmax())
    assert len(body["active_features"]) <= 20 and 3 in [f for f, _ in body["active_features"]]

    assert "no patch 'p9'" in error(client.patch("/patch/p9", json={"value": 1.0}), 404, "not_found")
    error(client.post("/patch/p9/toggle"), 404, "not_found")
    error(client.delete("/patch/p9"), 404, "not_found")
    assert "width 48" in error(client.post("/patch", json={"feature": 99, "kind": "add", "value": 1}), 404, "not_found")
    error(client.post("/patch", json={"feature": 1, "kind": "mul", "value": 1}), 422, "validation_error")
    bad = client.post("/patch", content='{"feature": 1, "kind": "add", "value": NaN}')
    error(bad, 422, "validation_error")
    assert client.delete("/patch/p1").json() == {"deleted": "p1"}
    assert client.post("/patches/clear").json() == {"patches": []}
    assert client.get("/patches").json() == {"patches": []}


def test_export_and_import(client, tmp_path):
    load(client)
    client.post("/patch", json={"feature": 3, "kind": "add", "value": 2.0})
    client.post("/patch", json={"feature": 5, "kind": "set", "value": 1.0})
    before = client.get("/patches").json()["patches"]
    exported = client.post("/export-sae", json={"name": "mine", "format": "patches"}).json()
    assert exported == {
        "path": str((tmp_path / "exports" / "mine").resolve()),
        "format": "patches",
        "files": ["patches.json", "patches.safetensors"],
    }
    error(client.post("/export-sae", json={"name": "mine", "format": "patches"}), 409, "conflict")
    assert client.post("/export-sae", json={"name": "mine", "format": "patches", "overwrite": True}).status_code == 200
    error(client.post("/export-sae", json={"name": "../x", "format": "patches"}), 400, "bad_request")
    reason = error(client.post("/export-sae", json={"name": "lora", "format": "lora"}), 400, "config_error")
    assert "depends on the input activation" in reason and not (tmp_path / "exports" / "lora").exists()
    client.post("/patch/p2/toggle", json={"enabled": False})
    lora = client.post("/export-sae", json={"name": "lora", "format": "lora"}).json()
    assert lora["files"] == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((tmp_path / "exports" / "lora" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["model.layers.1.mlp.down_proj"] and config["lora_bias"] is True
    sl = client.post("/export-sae", json={"name": "sl", "format": "saelens"}).json()
    assert sorted(sl["files"]) == ["cfg.json", "sae_weights.safetensors"]

    client.post("/patches/clear")
    imported = client.post("/import-patches", json={"path": "mine"}).json()["patches"]
    assert imported == before and client.get("/patches").json()["patches"] == before
    error(client.post("/import-patches", json={"path": "nothing"}), 404, "not_found")
    error(client.post("/import-patches", json={"path": "../exports/mine"}), 400, "bad_request")
    assert "lacks patches.json" in error(client.post("/import-patches", json={"path": "lora"}), 400, "config_error")


def receive(ws, kind: str) -> dict:
    message = ws.receive_json()
    assert message["type"] == kind, message
    return message


def test_websocket_live_patching(client):
    with client.websocket_connect("/ws") as one, client.websocket_connect("/ws") as two:
        one.send_json({"type": "inference", "id": "i1", "text": PROMPT, "k": 3})
        plain = receive(one, "logits")
        assert plain["id"] == "i1" and plain["top"] == plain["clean_top"] and plain["patches"] == []
        one.send_json({"type": "patch", "id": "x", "feature": 3, "kind": "add", "value": 1.0})
        assert receive(one, "error")["error"] == "conflict"  # no SAE yet

        load(client)  # a new SAE: the live prompt is re-sent
        assert receive(one, "logits")["reason"] == "sae"
        two.send_json({"type": "inference", "id": "i2", "text": "Hi there", "k": 2})
        assert receive(two, "logits")["id"] == "i2"

        one.send_json({"type": "patch", "id": "x", "feature": 3, "kind": "add", "value": 40.0})
        assert receive(one, "patch") == {
            "type": "patch",
            "id": "x",
            "patch": {"id": "p1", "feature": 3, "kind": "add", "value": 40.0, "enabled": True},
        }
        pushed_one, pushed_two = receive(one, "logits"), receive(two, "logits")
        assert (pushed_one["id"], pushed_one["reason"], pushed_one["text"]) == (None, "patch", PROMPT)
        assert (pushed_two["id"], pushed_two["reason"], pushed_two["text"]) == (None, "patch", "Hi there")
        assert pushed_one["patches"] == ["p1"] and len(pushed_two["top"]) == 2
        rest = client.post("/inference", json={"text": PROMPT, "k": 3}).json()
        assert pushed_one["top"] == rest["top"]

        one.send_json({"type": "patch", "id": "y", "patch_id": "p1", "enabled": False})
        assert receive(one, "patch")["patch"]["enabled"] is False
        off = receive(one, "logits")
        assert off["patches"] == [] and off["top"] == off["clean_top"]
        receive(two, "logits")

        client.patch("/patch/p1", json={"value": 2.0, "enabled": True})  # a REST change pushes too
        assert receive(one, "logits")["patches"] == ["p1"] and receive(two, "logits")["reason"] == "patch"

        one.send_json({"type": "patch", "id": "z", "patch_id": "p7", "value": 1.0})
        assert receive(one, "error") == {
            "type": "error",
            "id": "z",
            "error": "not_found",
            "message": "no patch 'p7'; GET /patches lists them",
        }
        one.send_json({"type": "patch", "id": "w", "feature": 3})
        assert receive(one, "error")["error"] == "validation_error"
        one.send_json({"type": "inference", "id": "e", "text": ""})
        assert receive(one, "error")["error"] == "config_error"
        one.send_json({"type": "ping"})
        assert receive(one, "pong")["type"] == "pong"
    assert client.app.state.server.live_hub.live() == []  # closed connections are forgotten


def test_a_model_switch_drops_the_sae(client):
    load(client)
    client.post("/patch", json={"feature": 3, "kind": "add", "value": 40.0})
    switched = client.post("/models/switch", json={"model": "tiny_gpt2"})
    assert switched.status_code == 200, switched.text
    error(client.get("/sae"), 404, "not_found")  # an SAE of tiny_llama means nothing on tiny_gpt2
    error(client.get("/patches"), 409, "conflict")
    body = client.post("/inference", json={"text": PROMPT, "k": 3}).json()
    assert body["patches"] == [] and body["top"] == body["clean_top"]
