"""A bounded load test of `interpsuite serve`: a real uvicorn server on a loopback port, 200 requests at once.

What it shows (issue 17, "Tests"): under a storm of mixed requests the server answers every one
of them either correctly or with a clean, documented refusal, and loses nothing:

- POST /inference (most of the storm; cheap, never queued) with an SAE loaded and a steering
  patch on: each answer's top tokens equal a reference computed once before the storm, and its
  top-1 equals an independent computation on the model itself (the patch as a plain `map`
  intervention), so a hook leaking between concurrent passes would show;
- POST /analyze of a request that was cached before the storm: the warm result, again;
- a few uncached analyses (different texts) on a 1-worker, 2-place queue: 200 with a result, or
  503 with Retry-After and the JSON error body; never a 500 or a connection error;
- afterwards every accepted analysis is retrievable with GET /runs/{run_id}, the server stops when
  asked (its thread joins within a bound), the pool is idle and the model carries no hooks.

The inference latency percentiles are printed and written as JSON to the test-artifacts folder
($INTERPSUITE_TEST_ARTIFACTS, default `test-artifacts/` in the repository): a record, never an
assertion (timings on a shared CI machine prove nothing).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

import httpx  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402

from interpsuite.hooks import Intervention  # noqa: E402
from interpsuite.server.app import create_app  # noqa: E402
from interpsuite.server.settings import ServerSettings  # noqa: E402
from interpsuite.testing import cached_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: the storm: (kind, count); 200 requests in all, started together
MIX = (("inference", 160), ("cached", 30), ("uncached", 10))
PROMPTS = ("The cat sat on the", "Paris is the capital of", "One, two, three,", "The weather today is")
WARM = {"text": "The cat sat on the mat.", "analyzers": {"logit_lens": {"top_k": 3}, "activation_stats": None}}
HOOK = "blocks.1.resid_post"
FEATURE, VALUE, WIDTH = 3, 6.0, 32
K = 5
#: the whole storm must end within this (a hang fails the test; nothing is timed by it)
STORM_LIMIT_S = 300.0
SHUTDOWN_LIMIT_S = 60.0


def artifacts_dir() -> Path:
    return Path(os.environ.get("INTERPSUITE_TEST_ARTIFACTS") or REPO / "test-artifacts")


# --- a real server in a thread ----------------------------------------------------------------------


class LiveServer:
    """uvicorn serving `app` on a free loopback port from a background thread.

    The socket is bound here (port 0: the OS picks a free one) and handed to uvicorn, so the port
    is known before the thread starts and no other test can take it in between."""

    def __init__(self, app: Any):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", backlog=512, timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, limit: float = 60.0) -> None:
        self.thread.start()
        end = time.monotonic() + limit
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < end, "the server did not start"
            time.sleep(0.02)

    def stop(self, limit: float = SHUTDOWN_LIMIT_S) -> bool:
        """Ask uvicorn to exit; True when its thread (lifespan shutdown included) ended in time."""
        self.server.should_exit = True
        self.thread.join(limit)
        self.sock.close()
        return not self.thread.is_alive()


@pytest.fixture
def live(tmp_path) -> Iterator[LiveServer]:
    settings = ServerSettings(
        model="tiny_llama",
        runs_dir=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        exports_dir=tmp_path / "exports",
        workers=1,
        queue=2,
        draw_figures=False,
        request_timeout_s=120.0,  # a stuck request fails the test instead of hanging it
    )
    server = LiveServer(create_app(settings, model=cached_model("tiny_llama")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- references, computed before the storm ------------------------------------------------------------


def save_sae(runs_dir: Path, d_model: int) -> Any:
    """A small random relu SAE at HOOK saved as `runs_dir/sae-load` (what POST /load-sae reads).
    Random weights are enough: the test checks that a patch is applied exactly, not what it means."""
    from interpsuite_plugins.sae.model import SAEConfig, SparseAutoencoder

    sae = SparseAutoencoder(SAEConfig(d_in=d_model, width=WIDTH, architecture="relu", hook=HOOK), seed=7)
    sae.save(runs_dir / "sae-load")
    return sae


def steered_top1(model: Any, sae: Any, text: str) -> tuple[int, int]:
    """(clean top-1, steered top-1) at the prompt's last token, computed on the model directly: the
    "add" patch is `x + VALUE * W_dec[FEATURE]` at HOOK (the decoder is linear), a plain `map`."""
    batch = model.tokenize([text])
    last = int(batch.last_positions()[0][0])
    vector = (VALUE * sae.W_dec[FEATURE]).detach()
    with torch.no_grad():
        clean = model.forward(batch).output[0, last]
        steered = model.forward(batch, interventions=[Intervention(HOOK, "map", fn=lambda x: x + vector)]).output
    return int(clean.argmax()), int(steered[0, last].argmax())


def ids(entries: list[dict]) -> list[int]:
    return [entry["id"] for entry in entries]


def analysis_view(body: dict) -> dict:
    """What must repeat exactly between two answers to the same analysis: metrics and tables."""
    return {
        name: {"metrics": entry.get("metrics"), "tables": entry.get("tables")}
        for name, entry in sorted(body["analyzers"].items())
    }


# --- the storm ----------------------------------------------------------------------------------------


@dataclass
class Answer:
    kind: str
    index: int
    status: int
    seconds: float
    body: Any
    headers: httpx.Headers


def request_for(kind: str, index: int) -> tuple[str, dict]:
    if kind == "inference":
        return "/inference", {"text": PROMPTS[index % len(PROMPTS)], "k": K}
    if kind == "cached":
        return "/analyze", WARM
    text = f"Analysis number {index}: a different text, so nothing is cached for it."
    return "/analyze", {"text": text, "analyzers": {"logit_lens": {"top_k": 3}, "activation_stats": None}}


async def storm(url: str) -> list[Answer]:
    plan = [(kind, i) for kind, count in MIX for i in range(count)]
    plan = plan[::2] + plan[1::2]  # interleave the kinds, deterministically
    limits = httpx.Limits(max_connections=len(plan), max_keepalive_connections=len(plan))
    timeout = httpx.Timeout(STORM_LIMIT_S, connect=60.0)
    start = asyncio.Event()

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:

        async def one(kind: str, index: int) -> Answer:
            path, body = request_for(kind, index)
            await start.wait()
            began = time.perf_counter()
            response = await client.post(path, json=body)
            seconds = time.perf_counter() - began
            return Answer(kind, index, response.status_code, seconds, response.json(), response.headers)

        tasks = [asyncio.create_task(one(kind, i)) for kind, i in plan]
        await asyncio.sleep(0)  # every task is waiting on `start`: release them together
        start.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), STORM_LIMIT_S)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def test_200_concurrent_mixed_requests_answer_correctly_or_503_and_lose_nothing(live, tmp_path):
    model = cached_model("tiny_llama")
    http = httpx.Client(base_url=live.url, timeout=120.0)

    # before the storm: an SAE with one steering patch, the reference answers, a warm cache entry
    sae = save_sae(tmp_path / "runs", model.info.d_model)
    loaded = http.post("/load-sae", json={"path": "sae-load", "corpus": ["The cat sat on the mat.", "Hello there."]})
    assert loaded.status_code == 200, loaded.text
    assert (loaded.json()["hook"], loaded.json()["width"]) == (HOOK, WIDTH)
    patch = http.post("/patch", json={"feature": FEATURE, "kind": "add", "value": VALUE, "enabled": True})
    assert patch.status_code == 201, patch.text
    reference: dict[str, dict] = {}
    for prompt in PROMPTS:
        answer = http.post("/inference", json={"text": prompt, "k": K})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        clean_top1, steered = steered_top1(model, sae, prompt)
        assert body["patches"] == [patch.json()["id"]]
        assert (body["clean_top"][0]["id"], body["top"][0]["id"]) == (clean_top1, steered), prompt
        reference[prompt] = body
    assert any(ids(r["top"]) != ids(r["clean_top"]) for r in reference.values()), "the patch changes nothing"
    warm = http.post("/analyze", json=WARM)
    assert warm.status_code == 200, warm.text
    warm_view = analysis_view(warm.json())

    answers = asyncio.run(storm(live.url))

    # every request: a correct answer or a clean 503, nothing else
    assert len(answers) == sum(count for _, count in MIX)
    statuses = {(a.kind, a.status) for a in answers}
    for a in answers:
        where = f"{a.kind}[{a.index}]"
        if a.status == 503:
            assert a.kind == "uncached", f"{where}: a cheap request was refused ({a.body})"
            assert int(a.headers["retry-after"]) > 0, where
            assert a.body["error"] == "busy" and "\n" not in a.body["message"], a.body
            continue
        assert a.status == 200, f"{where}: {a.status} {a.body}"
        if a.kind == "inference":
            expected = reference[PROMPTS[a.index % len(PROMPTS)]]
            assert ids(a.body["top"]) == ids(expected["top"]), where
            assert ids(a.body["clean_top"]) == ids(expected["clean_top"]), where
            got = [entry["prob"] for entry in a.body["top"]]
            assert got == pytest.approx([entry["prob"] for entry in expected["top"]], abs=1e-6), where
        else:
            assert a.body["status"] == "complete", f"{where}: {a.body['status']}"
            cached = all(entry["cached"] for entry in a.body["analyzers"].values())
            assert cached == (a.kind == "cached"), where
            if a.kind == "cached":
                assert analysis_view(a.body) == warm_view, where
    accepted = [a for a in answers if a.kind != "inference" and a.status == 200]
    assert any(a.kind == "uncached" for a in accepted), f"no uncached analysis ran: {sorted(statuses)}"

    # nothing is lost: every accepted analysis is a run the server can still show, with its numbers
    for a in accepted:
        run = http.get(f"/runs/{a.body['run_id']}")
        assert run.status_code == 200, run.text
        saved = run.json()
        assert saved["status"] == "complete"
        for name, entry in a.body["analyzers"].items():
            assert saved["analyzers"][name]["metrics"] == entry["metrics"], (a.kind, a.index, name)
    listed = {run["id"] for run in http.get("/runs").json()["runs"]}
    assert {a.body["run_id"] for a in accepted} <= listed
    http.close()

    latencies = [a.seconds for a in answers if a.kind == "inference"]
    report = {
        "requests": len(answers),
        "mix": dict(MIX),
        "statuses": {
            f"{kind} {status}": sum(1 for a in answers if (a.kind, a.status) == (kind, status))
            for kind, status in sorted(statuses)
        },
        "inference_latency_s": {
            "count": len(latencies),
            "p50": round(statistics.median(latencies), 4),
            "p95": round(percentile(latencies, 0.95), 4),
            "max": round(max(latencies), 4),
        },
        "server": {"model": "tiny_llama", "workers": 1, "queue": 2, "sae_width": WIDTH, "hook": HOOK},
        "cpu_count": os.cpu_count(),
    }
    folder = artifacts_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "server_load.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\ninference under load: p50 {report['inference_latency_s']['p50'] * 1000:.1f} ms, "
        f"p95 {report['inference_latency_s']['p95'] * 1000:.1f} ms over {len(latencies)} requests; "
        f"statuses {report['statuses']}"
    )

    # a clean shutdown: the thread ends in time, no job runs or waits, no hook is left on the model
    state = live.app.state.server
    assert live.stop(SHUTDOWN_LIMIT_S), f"the server thread did not end within {SHUTDOWN_LIMIT_S:g} s"
    assert state.pool.snapshot()["running"] == 0 and state.pool.snapshot()["waiting"] == 0
    assert all(not thread.is_alive() for thread in state.pool._threads)
    assert model.hooks_left() == 0
