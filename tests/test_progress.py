"""The progress hook in the core: events from RunContext.progress and the pipeline, cancellation,
and listeners that misbehave (interpsuite.progress)."""

from __future__ import annotations

import logging

import pytest

from interpsuite.models import load_model
from interpsuite.pipeline import EXIT_INTERRUPTED, InterpretabilityPipeline
from interpsuite.progress import Cancelled, CancelToken, ProgressEvent, ProgressReporter
from interpsuite.results import contract_errors, read_results

TEXTS = ["The cat sat on the mat.", "Paris is in France.", "One two three four.", "Hello world.", "A fifth text."]
ANALYZERS = {"activation_stats": {"layers": [0]}, "attention_entropy": {}, "logit_lens": {}}
BATCH = 2
N_BATCHES = 3  # ceil(5 / 2)


@pytest.fixture(scope="module")
def model():
    return load_model("tiny_llama")


def _run(model, tmp_path, listener=None, cancel=None, progress=False, analyzers=ANALYZERS):
    pipeline = InterpretabilityPipeline(
        model=model,
        data=TEXTS,
        analyzers=analyzers,
        output_dir=tmp_path / "run",
        sinks=("rundir",),
        batch_size=BATCH,
        progress=progress,
        draw_figures=False,
        listener=listener,
        cancel=cancel,
    )
    return pipeline.run()


def _expected(names, status="ok"):
    kinds = [("run_start", None, None)]
    for name in names:
        kinds.append(("analyzer_start", name, None))
        kinds += [("progress", name, None)] * N_BATCHES
        kinds.append(("analyzer_end", name, status))
    return kinds


@pytest.mark.parametrize("progress", [False, True])
def test_events_order_and_counts_with_bars_on_or_off(model, tmp_path, progress):
    events: list[ProgressEvent] = []
    report = _run(model, tmp_path, events.append, progress=progress)
    assert report.exit_code == 0
    got = [(e.kind, e.analyzer, e.status) for e in events]
    assert got == [*_expected(ANALYZERS), ("run_end", None, "complete")]
    assert events[0].total == len(ANALYZERS)
    for name in ANALYZERS:  # one progress event per batch, counting up to the bar's total
        bar = [e for e in events if e.kind == "progress" and e.analyzer == name]
        assert [(e.done, e.total) for e in bar] == [(i, N_BATCHES) for i in range(1, N_BATCHES + 1)]
        assert all(e.desc for e in bar)
    elapsed = [e.elapsed_s for e in events]
    assert elapsed == sorted(elapsed)


def test_cancel_after_the_first_analyzer_keeps_it_and_marks_the_rest(model, tmp_path):
    token, events = CancelToken(), []

    def listener(event):
        events.append(event)
        if event.kind == "analyzer_end":
            token.cancel()

    report = _run(model, tmp_path, listener, token)
    payload = read_results(tmp_path / "run")
    assert payload["status"] == "cancelled" and report.exit_code == EXIT_INTERRUPTED
    first, *rest = ANALYZERS
    assert payload["analyzers"][first]["status"] == "ok"
    for name in rest:
        entry = payload["analyzers"][name]
        assert entry["status"] == "interrupted"
        assert entry["error"].startswith("Cancelled: cancelled before it started")
    assert [(e.kind, e.analyzer, e.status) for e in events] == [*_expected([first]), ("run_end", None, "cancelled")]
    assert contract_errors(payload, tmp_path / "run") == []


def test_cancel_inside_an_analyzer_stops_it_between_batches(model, tmp_path):
    token, events = CancelToken(), []
    second = list(ANALYZERS)[1]

    def listener(event):
        events.append(event)
        if event.kind == "progress" and event.analyzer == second and event.done == 1:
            token.cancel()

    report = _run(model, tmp_path, listener, token)
    assert report.payload["status"] == "cancelled"
    statuses = {name: r.status for name, r in report.results.items()}
    assert statuses == {"activation_stats": "ok", "attention_entropy": "interrupted", "logit_lens": "interrupted"}
    assert report.results[second].error.startswith("Cancelled: cancelled before it finished")
    progress = [e for e in events if e.kind == "progress" and e.analyzer == second]
    assert len(progress) == 1  # the second batch never ran
    assert [(e.kind, e.status) for e in events[-2:]] == [("analyzer_end", "interrupted"), ("run_end", "cancelled")]


def test_a_listener_raising_cancelled_stops_the_run(model, tmp_path):
    def listener(event):
        if event.kind == "analyzer_end":
            raise Cancelled("enough")

    report = _run(model, tmp_path, listener)
    assert report.payload["status"] == "cancelled"
    assert [r.status for r in report.results.values()] == ["ok", "interrupted", "interrupted"]


def test_a_raising_listener_is_dropped_and_the_run_goes_on(model, tmp_path, caplog):
    calls = []

    def listener(event):
        calls.append(event.kind)
        raise RuntimeError("listener bug")

    with caplog.at_level(logging.WARNING, logger="interpsuite"):
        report = _run(model, tmp_path, listener)
    assert report.exit_code == 0 and report.payload["status"] == "complete"
    assert calls == ["run_start"]
    dropped = [r for r in caplog.records if "progress listener dropped" in r.getMessage()]
    assert len(dropped) == 1 and "listener bug" in dropped[0].getMessage()


def test_tracking_counts_items_and_checks_between_them():
    events, token = [], CancelToken()
    reporter = ProgressReporter(events.append, token)
    reporter.analyzer = "a"
    assert list(reporter.track([10, 20, 30], "items")) == [10, 20, 30]
    assert [(e.kind, e.analyzer, e.desc, e.done, e.total) for e in events] == [
        ("progress", "a", "items", i, 3) for i in (1, 2, 3)
    ]
    seen = []
    with pytest.raises(Cancelled):
        for item in reporter.track(iter(range(10)), "gen"):
            seen.append(item)
            if item == 3:
                token.cancel()
    assert seen == [0, 1, 2, 3] and events[-1].total is None and events[-1].done == 4


def test_without_listener_or_token_progress_is_untouched():
    reporter = ProgressReporter()
    assert not reporter.active
    reporter.emit("progress")  # nothing to call: no error
    event = ProgressEvent("analyzer_end", "x", status="ok", elapsed_s=float("nan"))
    assert event.to_dict() == {
        "kind": "analyzer_end",
        "analyzer": "x",
        "desc": "",
        "done": 0,
        "total": None,
        "status": "ok",
        "elapsed_s": None,
    }


def test_a_skipped_analyzer_has_only_its_end_event(tmp_path):
    events = []
    pipeline = InterpretabilityPipeline(
        model=load_model("tiny_bert"),
        data=TEXTS,
        analyzers={"logit_lens": {}, "activation_stats": {"layers": [0]}},
        output_dir=tmp_path / "run",
        sinks=("rundir",),
        batch_size=BATCH,
        progress=False,
        draw_figures=False,
        listener=events.append,
    )
    assert pipeline.run().exit_code == 0
    assert [(e.kind, e.analyzer, e.status) for e in events] == [
        ("run_start", None, None),
        ("analyzer_end", "logit_lens", "skipped"),
        *_expected(["activation_stats"])[1:],
        ("run_end", None, "complete"),
    ]
