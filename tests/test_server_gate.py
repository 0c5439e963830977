"""ModelGate: readers share the model, a weight-changing job holds it alone, readers queue behind a waiting writer."""

from __future__ import annotations

import threading
import time

import pytest

from interpsuite.server.gate import ModelGate

pytest.importorskip("fastapi")


def started(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_readers_share_and_a_writer_waits_for_them():
    gate, events = ModelGate(), []
    inside = threading.Barrier(3)
    release = threading.Event()

    def reader() -> None:
        with gate.shared():
            inside.wait(5)  # two readers inside at once, or this times out
            release.wait(5)

    readers = [started(reader), started(reader)]
    inside.wait(5)
    assert gate.snapshot()["readers"] == 2

    def writer() -> None:
        with gate.exclusive():
            events.append(("writer", gate.snapshot()["readers"]))

    w = started(writer)
    while not gate.snapshot()["writers_waiting"]:
        time.sleep(0.001)
    assert events == []  # it waits while the readers read
    release.set()
    w.join(5)
    for r in readers:
        r.join(5)
    assert events == [("writer", 0)]


def test_new_readers_queue_behind_a_waiting_writer_and_see_it_finished():
    gate, order = ModelGate(), []
    first_in, release = threading.Event(), threading.Event()

    def long_reader() -> None:
        with gate.shared():
            first_in.set()
            release.wait(5)
        order.append("reader1 out")

    def writer() -> None:
        with gate.exclusive():
            order.append("writer")

    def late_reader() -> None:
        with gate.shared():
            order.append("reader2")

    r1 = started(long_reader)
    first_in.wait(5)
    w = started(writer)
    while not gate.snapshot()["writers_waiting"]:
        time.sleep(0.001)
    r2 = started(late_reader)
    time.sleep(0.05)
    assert order == []  # reader2 does not overtake the waiting writer
    release.set()
    for thread in (r1, w, r2):
        thread.join(5)
    assert order == ["reader1 out", "writer", "reader2"]


def test_a_reader_may_read_again_but_not_write():
    gate = ModelGate()
    with gate.shared(), gate.shared():
        assert gate.snapshot()["readers"] == 1
        with pytest.raises(RuntimeError, match="cannot also change"):
            with gate.exclusive():
                pass
    assert gate.snapshot() == {"readers": 0, "writer": False, "writers_waiting": 0}


def test_inference_waits_while_a_job_holds_the_weights(tmp_path):
    from fastapi.testclient import TestClient

    from interpsuite.server.app import create_app
    from interpsuite.server.settings import ServerSettings
    from interpsuite.testing import cached_model

    settings = ServerSettings(model="tiny_llama", runs_dir=tmp_path / "runs", cache_dir=tmp_path / "cache")
    model = cached_model("tiny_llama")
    with TestClient(create_app(settings, model=model)) as client:
        clean = client.post("/inference", json={"text": "The cat sat on the", "k": 3}).json()["top"]
        state = client.app.state.server
        holding, release = threading.Event(), threading.Event()
        layer = model.hf_model.model.layers[0].mlp.down_proj
        saved = layer.weight.detach().clone()

        def prune_in_place(loaded, cancel) -> None:  # what an unstructured impact job does
            layer.weight.data.zero_()
            holding.set()
            release.wait(10)
            layer.weight.data.copy_(saved)

        job = state.submit(prune_in_place, "masks applied", exclusive=True)
        assert holding.wait(10)
        answers = []
        waiter = started(lambda: answers.append(client.post("/inference", json={"text": "The cat sat on the", "k": 3})))
        time.sleep(0.2)
        assert answers == []  # no forward pass on the masked weights
        release.set()
        job.future.result(10)
        waiter.join(10)
        assert answers[0].status_code == 200 and answers[0].json()["top"] == clean
