"""The REST + WebSocket API (`interpsuite.server`) against create_app on tiny_llama.

Every response is checked for the error contract (JSON, one line, never a traceback) by an httpx
response hook on each client. Slow analyses are a test analyzer, `test_gate`, that waits on a
`threading.Event` between progress items (and notices its CancelToken while it waits), so
"an analysis is running" is a fact the test controls, not a race against the clock.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.websockets import WebSocketDisconnect  # noqa: E402

from interpsuite.analyzer import Analyzer, build_config  # noqa: E402
from interpsuite.errors import ConfigError  # noqa: E402
from interpsuite.hookspecs import hookimpl  # noqa: E402
from interpsuite.plugins import get_registry  # noqa: E402
from interpsuite.results import Result  # noqa: E402
from interpsuite.server.app import create_app  # noqa: E402
from interpsuite.server.settings import ServerSettings  # noqa: E402
from interpsuite.testing import cached_model  # noqa: E402
from tests.server_support import error, no_traceback  # noqa: E402

TEXT = "The cat sat on the mat."
TOKEN = "s3cret-token-for-tests"


# --- a test analyzer that runs exactly as long as the test wants ------------------------------------


class Gate:
    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()


GATES: dict[str, Gate] = {}


def gate(name: str) -> Gate:
    return GATES.setdefault(name, Gate())


@dataclass
class GateConfig:
    gate: str = "default"
    steps: int = 2


class GateAnalyzer(Analyzer):
    name = "test_gate"
    description = "test: waits for a gate before each progress item"
    Config = GateConfig

    def run(self, ctx):
        g = gate(self.cfg.gate)
        token = ctx.reporter.cancel if ctx.reporter is not None else None
        for _ in ctx.progress(range(self.cfg.steps), desc="gate"):
            g.started.set()
            while not g.release.wait(0.01):
                if token is not None and token.cancelled:
                    break  # the next progress item raises Cancelled
        return Result(metrics={"steps": float(self.cfg.steps)}, summary={"gate": self.cfg.gate})


class GatePlugin:
    @hookimpl
    def interpsuite_analyzers(self):
        return [GateAnalyzer]


@pytest.fixture(scope="module")
def registry():
    return get_registry(extra_plugins=[GatePlugin()])


@pytest.fixture(autouse=True)
def _release_gates() -> Iterator[None]:
    yield
    for g in GATES.values():  # never leave a worker thread waiting
        g.release.set()


@pytest.fixture
def make_client(tmp_path, registry):
    """`make_client(**settings)` -> an entered TestClient on a fresh app (shared tiny_llama weights)."""
    clients = []

    def make(token: str | None = None, **overrides) -> TestClient:
        settings = ServerSettings(
            model="tiny_llama",
            runs_dir=tmp_path / f"runs{len(clients)}",
            cache_dir=tmp_path / f"cache{len(clients)}",
            token=token,
            draw_figures=overrides.pop("draw_figures", False),
            request_timeout_s=overrides.pop("request_timeout_s", 120.0),  # a failing test fails, never hangs
            **overrides,
        )
        client = TestClient(create_app(settings, registry=registry, model=cached_model("tiny_llama")))
        client.event_hooks = {"request": [], "response": [no_traceback]}
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for g in GATES.values():
        g.release.set()
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def state(client: TestClient):
    return client.app.state.server


# --- cheap endpoints ---------------------------------------------------------------------------------


def test_health_models_info_memory(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "tiny_llama" and health["version"] == "0.1.0"
    assert health["uptime_s"] >= 0
    assert health["queue"] == {"running": 0, "waiting": 0, "workers": 1, "capacity": 8}

    models = client.get("/models").json()
    assert models["loaded"] == "tiny_llama"
    assert [m["name"] for m in models["models"] if m["loaded"]] == ["tiny_llama"]
    assert {"smollm2", "tiny_gpt2"} <= {m["name"] for m in models["models"]}

    model = cached_model("tiny_llama")
    info = client.get("/model/info").json()
    assert {k: info[k] for k in model.info.to_dict()} == model.info.to_dict()
    assert info["hook_points"] == len(model.info.hook_points())
    assert info["hook_names"] == list(model.info.hook_points()) and "blocks.1.resid_post" in info["hook_names"]

    memory = client.get("/models/memory").json()
    params = list(model.hf_model.parameters())
    assert memory["parameter_bytes"] == sum(p.numel() * p.element_size() for p in params)
    assert memory["n_parameters"] == sum(p.numel() for p in params)
    assert memory["device"] == "cpu" and memory["dtypes"] == ["float32"]
    assert memory["process_rss_bytes"] > memory["parameter_bytes"]


def test_docs_and_openapi_list_every_analyzer_option(client, registry):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    analyzers = schemas["Analyzers"]["properties"]
    assert set(analyzers) == set(registry.analyzers)
    assert schemas["Analyzers"]["additionalProperties"] is False
    for name, item in registry.analyzers.items():
        options = "".join(p.capitalize() for p in name.split("_")) + "Options"
        assert set(schemas[options]["properties"]) == {f.name for f in fields(item.obj.Config)}, name
        assert schemas[options]["additionalProperties"] is False
    lens = schemas["LogitLensOptions"]["properties"]
    assert lens["top_k"]["default"] == build_config(registry.analyzer("logit_lens"), {}).top_k
    for path in ("/analyze", "/analyze/batch", "/models/switch", "/cache/clear"):
        assert "post" in spec["paths"][path]
    for path in ("/health", "/models", "/model/info", "/models/memory", "/cache/stats", "/runs", "/runs/{run_id}"):
        assert "get" in spec["paths"][path]


# --- /analyze ----------------------------------------------------------------------------------------


def test_analyze_tables_figures_runs_and_cache(make_client):
    client = make_client(draw_figures=True)
    request = {"text": TEXT, "analyzers": {"logit_lens": {"top_k": 3}, "activation_stats": None}}
    first = client.post("/analyze", json=request)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["status"] == "complete" and body["exit_code"] == 0 and "run_dir" not in body
    assert body["url"] == f"/runs/{body['run_id']}"
    lens = body["analyzers"]["logit_lens"]
    assert lens["status"] == "ok" and lens["cached"] is False
    assert lens["tables"] and all(isinstance(rows, list) and rows for rows in lens["tables"].values())
    assert lens["figures"], "logit_lens draws figures"
    for url in lens["figures"]:
        assert url.startswith(f"/runs/{body['run_id']}/files/figures/logit_lens/")
    png = client.get(next(u for u in lens["figures"] if u.endswith(".png")))
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    csv = client.get(next(iter(lens["table_files"].values())))
    assert (
        csv.status_code == 200
        and csv.text.splitlines()[0].split(",")[0] in lens["tables"][next(iter(lens["table_files"]))][0]
    )

    # the run is listed and its results.json served, equal to what /analyze answered
    runs = client.get("/runs").json()["runs"]
    assert [r["id"] for r in runs] == [body["run_id"]]
    assert runs[0]["status"] == "complete" and sorted(runs[0]["analyzers"]) == ["activation_stats", "logit_lens"]
    saved = client.get(f"/runs/{body['run_id']}").json()
    assert saved["analyzers"]["logit_lens"]["metrics"] == lens["metrics"]

    # the same request again: from the cache, the same numbers, a new run, no queue
    second = client.post("/analyze", json=request).json()
    assert second["run_id"] != body["run_id"]
    for name in ("logit_lens", "activation_stats"):
        assert second["analyzers"][name]["cached"] is True
        assert second["analyzers"][name]["metrics"] == body["analyzers"][name]["metrics"]
        assert second["analyzers"][name]["tables"] == body["analyzers"][name]["tables"]
    assert client.get(second["analyzers"]["logit_lens"]["figures"][0]).status_code == 200
    stats = client.get("/cache/stats").json()
    assert (stats["entries"], stats["hits"], stats["misses"]) == (2, 2, 2)

    cleared = client.post("/cache/clear").json()
    assert cleared["removed"] == 2 and cleared["stats"]["entries"] == 0


def test_analyze_texts_and_batch(client):
    texts = ["Hello there.", "Paris is in France."]
    gate("batch").release.set()
    single = client.post("/analyze", json={"texts": texts, "analyzers": {"activation_stats": {}}})
    assert single.status_code == 200, single.text
    batch = client.post(
        "/analyze/batch",
        json={
            "items": [
                {"texts": texts, "analyzers": {"activation_stats": {}}},
                {"text": TEXT, "analyzers": {"test_gate": {"gate": "batch", "steps": 1}}},
            ]
        },
    )
    assert batch.status_code == 200, batch.text
    items = batch.json()["items"]
    assert len(items) == 2 and items[0]["run_id"] != items[1]["run_id"]
    assert (
        items[0]["analyzers"]["activation_stats"]["metrics"]
        == single.json()["analyzers"]["activation_stats"]["metrics"]
    )
    assert items[1]["analyzers"]["test_gate"]["metrics"] == {"steps": 1.0}


def test_validation_errors_are_one_line_json(client, registry):
    def post(body, path="/analyze"):
        return client.post(path, json=body)

    with pytest.raises(ConfigError) as unknown:
        registry.analyzer("no_such_analyzer")
    assert error(post({"text": TEXT, "analyzers": {"no_such_analyzer": {}}}), 422, "validation_error") == str(
        unknown.value
    )
    with pytest.raises(ConfigError) as option:
        build_config(registry.analyzer("logit_lens"), {"no_such_option": 1})
    message = error(post({"text": TEXT, "analyzers": {"logit_lens": {"no_such_option": 1}}}), 422, "validation_error")
    assert message == str(option.value) and message.startswith("analyzers.logit_lens.no_such_option")
    message = error(post({"text": TEXT, "analyzers": {"logit_lens": {"layers": "all"}}}), 422, "validation_error")
    assert message.startswith("analyzers.logit_lens.layers:")
    both = {"text": TEXT, "texts": [TEXT], "analyzers": {"logit_lens": {}}}
    assert error(post(both), 422, "validation_error") == "request: give either `text` or `texts` (exactly one)"
    neither = error(post({"analyzers": {"logit_lens": {}}}), 422, "validation_error")
    assert neither == "request: give either `text` or `texts` (exactly one)"
    assert "analyzers" in error(post({"text": TEXT, "analyzers": {}}), 422, "validation_error")
    assert error(post({"text": TEXT}), 422, "validation_error") == "analyzers: field required"
    assert error(post({"text": 3, "analyzers": {"logit_lens": {}}}), 422, "validation_error").startswith("text:")
    assert error(post({"text": TEXT, "analyzers": {"logit_lens": {}}, "x": 1}), 422, "validation_error").startswith(
        "x:"
    )
    bad_json = client.post("/analyze", content=b'{"text": ', headers={"content-type": "application/json"})
    assert "not valid JSON" in error(bad_json, 422, "validation_error")
    # ConfigErrors from the analyzers' own checks: 400 with the CLI's message
    assert error(post({"text": "", "analyzers": {"logit_lens": {}}}), 400, "config_error") == (
        "texts[0] is empty; give non-empty texts only"
    )
    assert error(post({"text": TEXT, "analyzers": {"logit_lens": {"layers": [7]}}}), 400, "config_error") == (
        "logit_lens: layer 7 out of range; tiny_llama has layers 0..1"
    )
    # batches: every item is checked before any runs, the item named
    items = [
        {"text": TEXT, "analyzers": {"activation_stats": {}}},
        {"text": TEXT, "analyzers": {"logit_lens": {"layers": [7]}}},
    ]
    assert error(post({"items": items}, "/analyze/batch"), 400, "config_error").startswith(
        "items[1]: logit_lens: layer 7"
    )
    assert error(post({"items": []}, "/analyze/batch"), 422, "validation_error").startswith("items:")
    message = error(
        post({"items": [{"text": TEXT, "analyzers": {"nope": {}}}]}, "/analyze/batch"), 422, "validation_error"
    )
    assert message.startswith("items[0]: unknown analyzer 'nope'")
    assert client.get("/runs").json()["runs"] == [], "nothing ran"
    # other routes
    assert error(client.get("/no/such/route"), 404, "not_found").startswith("no such endpoint")
    assert error(client.get("/analyze"), 405, "method_not_allowed")


def test_limits_answer_413(make_client):
    client = make_client(max_body_bytes=2000, max_text_chars=50, max_texts=3)
    big = {"text": "x" * 3000, "analyzers": {"activation_stats": {}}}
    assert "2000 bytes" in error(client.post("/analyze", json=big), 413, "payload_too_large")

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"text": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'", "analyzers": {"activation_stats": {}}}'

    streamed = client.post("/analyze", content=chunks(), headers={"content-type": "application/json"})
    assert "2000 bytes" in error(streamed, 413, "payload_too_large")
    long_text = {"text": "z" * 51, "analyzers": {"activation_stats": {}}}
    assert error(client.post("/analyze", json=long_text), 413, "payload_too_large") == (
        "texts[0] has 51 characters; the server's limit is 50"
    )
    many = {"texts": ["a"] * 4, "analyzers": {"activation_stats": {}}}
    assert error(client.post("/analyze", json=many), 413, "payload_too_large") == (
        "4 texts in one request; the server's limit is 3"
    )
    batch = {"items": [{"texts": ["a", "b"], "analyzers": {"activation_stats": {}}}] * 2}
    assert error(client.post("/analyze/batch", json=batch), 413, "payload_too_large").startswith("4 texts")
    assert client.get("/runs").json()["runs"] == []


def test_token_required_except_health(make_client):
    client = make_client(token=TOKEN)
    assert client.get("/health").status_code == 200
    for method, path in (("GET", "/models"), ("GET", "/runs"), ("POST", "/analyze"), ("GET", "/runs/x/files/a")):
        response = client.request(method, path)
        assert "bearer token" in error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert client.get("/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/models", headers={"Authorization": TOKEN}).status_code == 401
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/models", headers=good).status_code == 200
    response = client.post("/analyze", json={"text": TEXT, "analyzers": {"activation_stats": {}}}, headers=good)
    assert response.status_code == 200
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
    with client.websocket_connect("/ws", headers=good) as ws:
        ws.send_json({"type": "ping", "id": 1})
        assert ws.receive_json() == {"type": "pong", "id": 1}
    # a browser's WebSocket cannot send headers: the token may come as ?token= (on /ws only)
    with client.websocket_connect(f"/ws?token={TOKEN}") as ws:
        ws.send_json({"type": "ping", "id": 2})
        assert ws.receive_json() == {"type": "pong", "id": 2}
    with pytest.raises(WebSocketDisconnect):
        with client.websocket_connect("/ws?token=wrong") as ws:
            ws.receive_json()
    assert client.get(f"/models?token={TOKEN}").status_code == 401  # not for HTTP: headers work there
    # pages that hold no data load without it (a browser cannot add a header to the page it opens)
    for path in ("/docs", "/openapi.json", "/docs-static/swagger-ui.css"):
        assert client.get(path).status_code == 200, path
    assert client.post("/docs").status_code in (401, 405)


def test_docs_page_works_offline(client):
    page = client.get("/docs").text
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    assert assets and all(url.startswith("/docs-static/") for url in assets), assets
    assert "http://" not in page.replace("http://localhost", "") and "https://" not in page
    for url in assets:
        assert client.get(url).status_code == 200, url
    assert "openapi.json" in page


def test_cors_closed_by_default_and_open_for_given_origins(make_client):
    closed = make_client()
    response = closed.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    preflight = closed.options(
        "/analyze", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert "access-control-allow-origin" not in preflight.headers
    opened = make_client(cors_origins=("http://localhost:5173",))
    response = opened.get("/health", headers={"Origin": "http://localhost:5173"})
    assert response.headers["access-control-allow-origin"] == "http://localhost:5173"
    response = opened.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in response.headers


# --- concurrency ---------------------------------------------------------------------------------------


def gate_request(name: str, steps: int = 2) -> dict:
    return {"text": TEXT, "analyzers": {"test_gate": {"gate": name, "steps": steps}}}


def wait_for(predicate, what: str, limit: float = 60.0) -> None:
    end = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.01)


def test_full_queue_answers_503_and_cheap_requests_do_not_wait(make_client):
    client = make_client(workers=1, queue=1)
    with ThreadPoolExecutor(2) as threads:
        running = threads.submit(client.post, "/analyze", json=gate_request("q1"))
        assert gate("q1").started.wait(60)
        waiting = threads.submit(client.post, "/analyze", json=gate_request("q2"))
        wait_for(lambda: state(client).pool.waiting == 1, "the second analysis to queue")

        # a slow analysis runs and one waits: cheap requests are answered at once
        health = client.get("/health").json()
        assert health["queue"] == {"running": 1, "waiting": 1, "workers": 1, "capacity": 1}
        for path in ("/models", "/model/info", "/cache/stats", "/runs", "/models/memory"):
            assert client.get(path).status_code == 200
        full = client.post("/analyze", json=gate_request("q3"))
        assert "retry later" in error(full, 503, "busy")
        assert full.headers["retry-after"] == "5"
        batch = client.post("/analyze/batch", json={"items": [gate_request("q3")]})
        assert error(batch, 503, "busy")
        assert not gate("q3").started.is_set()

        gate("q1").release.set()
        gate("q2").release.set()
        assert running.result(60).status_code == 200
        assert waiting.result(60).status_code == 200
    assert state(client).pool.wait_idle(60)
    assert client.get("/health").json()["queue"]["running"] == 0
    statuses = {r["status"] for r in client.get("/runs").json()["runs"]}
    assert statuses == {"complete"}


def test_cached_answers_skip_the_busy_queue(make_client):
    client = make_client(workers=1, queue=0)
    request = {"text": TEXT, "analyzers": {"activation_stats": {}}}
    fresh = client.post("/analyze", json=request).json()
    with ThreadPoolExecutor(1) as threads:
        running = threads.submit(client.post, "/analyze", json=gate_request("busy"))
        assert gate("busy").started.wait(60)
        uncached = {"text": "Another text.", "analyzers": {"activation_stats": {}}}
        assert error(client.post("/analyze", json=uncached), 503, "busy")
        cached = client.post("/analyze", json=request)  # all analyzers cached: no forward pass, no queue
        assert cached.status_code == 200
        entry = cached.json()["analyzers"]["activation_stats"]
        assert entry["cached"] is True and entry["metrics"] == fresh["analyzers"]["activation_stats"]["metrics"]
        assert state(client).pool.snapshot()["running"] == 1
        gate("busy").release.set()
        assert running.result(60).status_code == 200


def test_time_budget_cancels_the_analysis_with_504(make_client):
    client = make_client(request_timeout_s=0.5)
    response = client.post("/analyze", json=gate_request("slow", steps=3))
    assert "budget" in error(response, 504, "timeout")
    assert state(client).pool.wait_idle(60), "the cancelled analysis ended and freed its worker"
    runs = client.get("/runs").json()["runs"]
    assert [r["status"] for r in runs] == ["cancelled"]


def test_model_switch(make_client):
    client = make_client()
    assert error(client.post("/models/switch", json={"model": "no_such_model"}), 400, "config_error").startswith(
        "unknown model 'no_such_model'"
    )
    assert error(client.post("/models/switch", json={}), 422, "validation_error") == "model: field required"
    same = client.post("/models/switch", json={"model": "tiny_llama"}).json()
    assert same == {"model": "tiny_llama", "previous": "tiny_llama", "switched": False}

    with ThreadPoolExecutor(1) as threads:
        running = threads.submit(client.post, "/analyze", json=gate_request("switch"))
        assert gate("switch").started.wait(60)
        busy = client.post("/models/switch", json={"model": "tiny_gpt2"})
        assert "1 analyses are running" in error(busy, 409, "conflict")
        gate("switch").release.set()
        assert running.result(60).status_code == 200
    state(client).pool.wait_idle(60)

    switched = client.post("/models/switch", json={"model": "tiny_gpt2"})
    assert switched.json() == {"model": "tiny_gpt2", "previous": "tiny_llama", "switched": True}
    assert client.get("/health").json()["model"] == "tiny_gpt2"
    assert client.get("/model/info").json()["architecture"] == "gpt2"
    assert [m["name"] for m in client.get("/models").json()["models"] if m["loaded"]] == ["tiny_gpt2"]
    body = client.post("/analyze", json={"text": TEXT, "analyzers": {"activation_stats": {}}}).json()
    assert client.get(f"/runs/{body['run_id']}").json()["model"]["name"] == "tiny_gpt2"


# --- runs and confinement ------------------------------------------------------------------------------


def test_run_files_are_confined(client, tmp_path):
    body = client.post("/analyze", json={"text": TEXT, "analyzers": {"activation_stats": {}}}).json()
    run_id = body["run_id"]
    run_dir = Path(state(client).settings.runs_dir) / run_id
    assert client.get(f"/runs/{run_id}/files/results.json").json()["analyzers"].keys() == {"activation_stats"}
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (run_dir / "link.txt").symlink_to(secret)
    (run_dir / "linkdir").symlink_to(tmp_path)

    assert error(client.get(f"/runs/{run_id}/files/link.txt"), 404, "not_found")
    assert error(client.get(f"/runs/{run_id}/files/linkdir/secret.txt"), 404, "not_found")
    assert error(client.get(f"/runs/{run_id}/files/%2E%2E/%2E%2E/secret.txt"), 400, "bad_request")
    assert error(client.get(f"/runs/{run_id}/files/tables/..%2F..%2F..%2Fsecret.txt"), 400, "bad_request")
    assert error(client.get(f"/runs/{run_id}/files/%2F{str(secret).lstrip('/')}"), 400, "bad_request")
    assert error(client.get(f"/runs/{run_id}/files/no_such_file"), 404, "not_found")
    assert error(client.get(f"/runs/{run_id}/files/tables"), 404, "not_found")  # a folder
    assert error(client.get("/runs/no_such_run"), 404, "not_found")
    assert error(client.get("/runs/%2E%2E"), 404, "not_found")
    assert error(client.get("/runs/%2E%2E/files/secret.txt"), 404, "not_found")
    assert error(client.get("/runs/..%2F/files/secret.txt"), 404, "not_found")
    for response in [client.get(f"/runs/{run_id}/files/link.txt"), client.get("/runs/%2E%2E/files/secret.txt")]:
        assert "top secret" not in response.text


def test_a_crashing_analysis_is_500_over_http_and_an_error_event_over_websocket(client, monkeypatch):
    def crash(*args, **kwargs):
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(state(client).current().service, "analyze", crash)
    request = {"text": TEXT, "analyzers": {"activation_stats": {}}}
    response = client.post("/analyze", json=request)
    assert "unexpected server error" in error(response, 500, "internal_error")
    assert "secret" not in response.text
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "analyze", "id": 1, **request})
        assert ws.receive_json()["type"] == "accepted"
        reply = ws.receive_json()
        assert (reply["type"], reply["id"], reply["error"]) == ("error", 1, "internal_error")
        assert "secret" not in json.dumps(reply) and "Traceback" not in json.dumps(reply)
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"
    assert state(client).pool.wait_idle(60)


def test_unexpected_errors_are_500_with_an_id_and_no_traceback(client, monkeypatch, caplog):
    def broken():
        raise RuntimeError("database on fire\nTraceback (most recent call last): fake")

    monkeypatch.setattr(state(client).current().service, "runs", broken)
    with caplog.at_level("ERROR", logger="interpsuite.server"):
        response = client.get("/runs")
    message = error(response, 500, "internal_error")
    body = response.json()
    assert body["error_id"] in message and "fire" not in response.text
    assert any(body["error_id"] in record.getMessage() and record.exc_info for record in caplog.records)


# --- WebSocket ----------------------------------------------------------------------------------------


def receive_until_result(ws) -> tuple[list[dict], dict]:
    events = []
    while True:
        message = ws.receive_json()
        if message["type"] == "result":
            return events, message
        assert message["type"] in ("accepted", "progress"), message
        events.append(message)


def test_websocket_streams_progress_then_the_result(client):
    request = {"text": TEXT, "analyzers": {"activation_stats": {}, "test_gate": {"gate": "ws", "steps": 3}}}
    gate("ws").release.set()
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "analyze", "id": "a1", **request})
        events, result = receive_until_result(ws)
    assert events[0]["type"] == "accepted" and events[0]["id"] == "a1"
    progress = events[1:]
    assert all(e["type"] == "progress" and e["id"] == "a1" for e in progress)
    kinds = [e["kind"] for e in progress]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end" and progress[-1]["status"] == "complete"
    gate_items = [e for e in progress if e["analyzer"] == "test_gate" and e["kind"] == "progress"]
    assert [(e["done"], e["total"], e["desc"]) for e in gate_items] == [(1, 3, "gate"), (2, 3, "gate"), (3, 3, "gate")]
    assert [e["analyzer"] for e in progress if e["kind"] == "analyzer_end"] == ["activation_stats", "test_gate"]
    assert result["id"] == "a1" and result["status"] == "complete"
    # the same answer as POST /analyze (from the cache now)
    http = client.post("/analyze", json=request).json()
    for name in ("activation_stats", "test_gate"):
        assert http["analyzers"][name]["metrics"] == result["analyzers"][name]["metrics"]
        assert http["analyzers"][name]["cached"] is True


def test_websocket_bad_messages_keep_the_connection(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_text("{not json")
        reply = ws.receive_json()
        assert reply["type"] == "error" and reply["error"] == "bad_message" and "not JSON" in reply["message"]
        ws.send_text("[1, 2]")
        assert "JSON object" in ws.receive_json()["message"]
        ws.send_json({"type": "launch", "id": 5})
        reply = ws.receive_json()
        assert reply == {"type": "error", "id": 5, "error": "bad_message", "message": reply["message"]}
        assert "unknown message type 'launch'" in reply["message"]
        ws.send_json({"type": "analyze", "id": 6, "text": TEXT, "analyzers": {"nope": {}}})
        reply = ws.receive_json()
        assert (reply["id"], reply["error"]) == (6, "validation_error")
        assert reply["message"].startswith("unknown analyzer 'nope'")
        ws.send_json({"type": "analyze", "id": 7, "text": TEXT, "analyzers": {"logit_lens": {"layers": [9]}}})
        assert ws.receive_json()["message"] == "logit_lens: layer 9 out of range; tiny_llama has layers 0..1"
        ws.send_json({"type": "cancel", "id": "none"})
        assert ws.receive_json()["error"] == "not_found"
        ws.send_text(json.dumps({"type": "analyze", "text": "x" * (2 << 20), "analyzers": {"logit_lens": {}}}))
        assert ws.receive_json()["error"] == "payload_too_large"
        ws.send_bytes(b"\xff\xfe")
        assert ws.receive_json()["error"] == "bad_message"
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong", "id": None}
    assert client.get("/runs").json()["runs"] == []


def test_websocket_cancel_message(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "analyze", "id": "c", **gate_request("ws-cancel", steps=5)})
        assert ws.receive_json()["type"] == "accepted"
        assert gate("ws-cancel").started.wait(60)
        ws.send_json({"type": "cancel", "id": "c"})
        events, result = receive_until_result(ws)
    assert result["status"] == "cancelled" and result["exit_code"] == 130
    assert events[-1]["kind"] == "run_end" and events[-1]["status"] == "cancelled"
    assert state(client).pool.wait_idle(60)


def test_websocket_disconnect_cancels_the_analysis_and_frees_the_pool(client):
    with client.websocket_connect("/ws") as ws:
        ws.send_json({"type": "analyze", "id": "d", **gate_request("ws-gone", steps=5)})
        assert ws.receive_json()["type"] == "accepted"
        assert gate("ws-gone").started.wait(60)
        assert state(client).pool.running == 1
    # the client is gone; the gate is never released: only the CancelToken can end the job
    assert state(client).pool.wait_idle(60)
    assert state(client).pool.snapshot() == {"running": 0, "waiting": 0, "workers": 1, "capacity": 8}
    assert not gate("ws-gone").release.is_set()
    runs = client.get("/runs").json()["runs"]
    assert [r["status"] for r in runs] == ["cancelled"]
    # and the pool takes new work
    ok = client.post("/analyze", json={"text": TEXT, "analyzers": {"activation_stats": {}}})
    assert ok.status_code == 200


def test_error_bodies_are_json_lines():
    from interpsuite.server.errors import one_line, validation_message

    assert one_line("first\nsecond") == "first"
    assert one_line("  spaced   out  ") == "spaced out"
    message = validation_message([{"loc": ("body", "items", 0, "text"), "msg": "bad", "type": "x"}] * 3)
    assert message == "items[0].text: bad (and 2 more problems)"
    assert json.loads(json.dumps({"m": message}))["m"] == message
