"""AnalysisService: the engine behind `POST /analyze` and `interpsuite analyze` (tiny_llama only)."""

from __future__ import annotations

import csv
import json
import threading

import pytest

from interpsuite.analysis_service import RUN_ID, AnalysisService, new_run_id
from interpsuite.errors import ConfigError
from interpsuite.models import load_model
from interpsuite.pipeline import InterpretabilityPipeline
from interpsuite.progress import CancelToken
from interpsuite.result_cache import ResultCache
from interpsuite.results import contract_errors, read_results

TEXTS = ["The cat sat on the mat.", "Paris is the capital of France.", "One two three four five."]
ANALYZERS = {"activation_stats": {"layers": [0, 1]}, "attention_entropy": None}
#: the parts of an entry that are the analysis itself (duration_s is wall time)
SAME = ("status", "error", "metrics", "checks", "summary", "tables", "figures", "figure_files", "table_files", "inputs")


@pytest.fixture(scope="module")
def model():
    return load_model("tiny_llama")


@pytest.fixture
def forwards(model):
    """How many forward passes the HF model made (a forward hook on the model itself)."""
    calls = []
    handle = model.hf_model.register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()


def _service(model, tmp_path, draw_figures=False, **kwargs):
    return AnalysisService(model, runs_dir=tmp_path / "runs", batch_size=2, draw_figures=draw_figures, **kwargs)


def _same(entry):
    return {key: entry.get(key) for key in SAME}


def test_outcome_equals_a_direct_pipeline_run(model, tmp_path):
    outcome = _service(model, tmp_path).analyze(TEXTS, ANALYZERS)
    assert outcome.status == "complete" and outcome.exit_code == 0
    assert RUN_ID.match(outcome.run_id) and outcome.run_dir == (tmp_path / "runs" / outcome.run_id).resolve()
    direct_dir = tmp_path / "direct"
    InterpretabilityPipeline(
        model=model,
        data=TEXTS,
        analyzers=ANALYZERS,
        output_dir=direct_dir,
        sinks=("rundir",),
        batch_size=2,
        progress=False,
        draw_figures=False,
    ).run()
    direct = read_results(direct_dir)
    saved = read_results(outcome.run_dir)
    assert list(outcome.analyzers) == list(ANALYZERS)
    assert contract_errors(saved, outcome.run_dir) == []
    for name, entry in outcome.analyzers.items():
        expected = direct["analyzers"][name]
        assert entry["metrics"] == expected["metrics"]  # exactly
        for key in ("status", "error", "checks", "summary", "inputs", "figure_data"):
            assert entry[key] == expected[key], key
        assert entry["table_files"] == expected["tables"] and entry["figure_files"] == expected["figures"]
        assert saved["analyzers"][name]["metrics"] == expected["metrics"]
        assert entry["cached"] is False
        for table, rows in entry["tables"].items():  # rows: the table as written, one dict per CSV row
            with open(outcome.run_dir / entry["table_files"][table], newline="") as handle:
                written = list(csv.DictReader(handle))
            assert len(rows) == len(written) and list(rows[0]) == list(written[0])
    text = json.dumps(outcome.to_dict(), allow_nan=False)
    assert (
        json.loads(text)["analyzers"]["activation_stats"]["metrics"]
        == direct["analyzers"]["activation_stats"]["metrics"]
    )


def test_check_gives_the_pipeline_messages_before_any_forward(model, tmp_path, forwards):
    service = _service(model, tmp_path)

    def message(texts, analyzers):
        with pytest.raises(ConfigError) as err:
            service.check(texts, analyzers)
        return str(err.value)

    def cli_message(analyzers):
        pipeline = InterpretabilityPipeline(model="tiny_llama", data=TEXTS, analyzers=analyzers, sinks=("rundir",))
        with pytest.raises(ConfigError) as err:
            pipeline.validate()
        return str(err.value)

    for bad in ({"no_such_analyzer": {}}, {"activation_stats": {"layerz": [0]}}, {"activation_stats": {"layers": [7]}}):
        got = message(TEXTS, bad)
        assert got == cli_message(bad) and "\n" not in got
    assert "unknown analyzer 'no_such_analyzer'" in message(TEXTS, {"no_such_analyzer": {}})
    assert message([], ANALYZERS) == "texts: the list is empty; give at least one non-empty text"
    assert message(["fine", "  "], ANALYZERS) == "texts[1] is empty; give non-empty texts only"
    assert message("one string", ANALYZERS).startswith("texts: expected a list of strings")
    assert message(TEXTS, {}).startswith("no analyzers selected")
    assert message(TEXTS, {"activation_stats": 3}).startswith("analyzers.activation_stats: expected a mapping")
    service.check(TEXTS, ANALYZERS)  # a good request passes
    assert forwards == [] and list((tmp_path / "runs").iterdir()) == []


def test_cache_hit_returns_equal_entries_without_a_forward_pass(model, tmp_path, forwards):
    service = _service(model, tmp_path, draw_figures=True, cache=ResultCache(tmp_path / "cache"))
    first = service.analyze(TEXTS, ANALYZERS)
    assert forwards and not any(e["cached"] for e in first.analyzers.values())
    assert service.cache.stats().entries == len(ANALYZERS)
    forwards.clear()
    events = []
    second = service.analyze(TEXTS, ANALYZERS, listener=events.append)
    assert forwards == []
    assert second.run_id != first.run_id and second.status == "complete" and second.exit_code == 0
    for name in ANALYZERS:
        hit, fresh = second.analyzers[name], first.analyzers[name]
        assert hit["cached"] is True
        assert _same(hit) == _same(fresh)
        assert list(hit["metrics"]) == list(fresh["metrics"])  # the order too
        assert hit["figures"] and all(
            list(r) == list(f) for r, f in zip(hit["tables"].values(), fresh["tables"].values(), strict=True)
        )
        assert hit["duration_s"] == fresh["duration_s"]  # the stored entry, as it was
        for rel in hit["figures"] + list(hit["table_files"].values()):
            assert (second.run_dir / rel).read_bytes() == (first.run_dir / rel).read_bytes()
    saved = read_results(second.run_dir)
    assert contract_errors(saved, second.run_dir) == []
    assert [saved["analyzers"][n]["cached"] for n in ANALYZERS] == [True, True]
    assert [(e.kind, e.analyzer) for e in events] == [
        ("run_start", None),
        *[(kind, name) for name in ANALYZERS for kind in ("analyzer_start", "analyzer_end")],
        ("run_end", None),
    ]
    # other options or other texts: a miss; a mix runs only the miss
    mixed = service.analyze(TEXTS, {"activation_stats": {"layers": [0, 1]}, "attention_entropy": {"layers": [0]}})
    assert forwards and [e["cached"] for e in mixed.analyzers.values()] == [True, False]
    assert mixed.analyzers["activation_stats"]["metrics"] == first.analyzers["activation_stats"]["metrics"]
    forwards.clear()
    other = service.analyze(TEXTS[:2], {"activation_stats": {"layers": [0, 1]}})
    assert forwards and other.analyzers["activation_stats"]["cached"] is False


def test_concurrent_requests_equal_sequential_ones(model, tmp_path):
    service = _service(model, tmp_path, draw_figures=True)  # figures too: drawn in several threads at once
    requests = [
        (TEXTS, {"activation_stats": {"layers": [0, 1]}}),
        (TEXTS[1:], {"attention_entropy": {}}),
        (TEXTS[:2], {"logit_lens": {}}),
        (TEXTS[::-1], {"activation_stats": {"hook_points": ["resid_pre"]}, "attention_entropy": {}}),
    ]
    sequential = [service.analyze(texts, analyzers) for texts, analyzers in requests]
    outcomes: list = [None] * len(requests)
    errors: list = []
    barrier = threading.Barrier(len(requests))

    def work(i):
        try:
            barrier.wait()
            outcomes[i] = service.analyze(*requests[i])
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({o.run_id for o in outcomes + sequential}) == 2 * len(requests)
    for alone, together in zip(sequential, outcomes, strict=True):
        assert together.status == alone.status == "complete"
        assert read_results(together.run_dir)["sinks"]["rundir"] == {"status": "ok", "error": None}  # every file saved
        assert {n: _same(e) for n, e in together.analyzers.items()} == {n: _same(e) for n, e in alone.analyzers.items()}
    assert model.hooks_left() == 0


def test_cancel_keeps_the_finished_analyzer(model, tmp_path):
    token, events = CancelToken(), []

    def listener(event):
        events.append(event)
        if event.kind == "analyzer_end":
            token.cancel()

    outcome = _service(model, tmp_path).analyze(TEXTS, {**ANALYZERS, "logit_lens": {}}, listener=listener, cancel=token)
    assert outcome.status == "cancelled" and outcome.exit_code == 130
    assert [e["status"] for e in outcome.analyzers.values()] == ["ok", "interrupted", "interrupted"]
    assert events[0].kind == "run_start" and (events[-1].kind, events[-1].status) == ("run_end", "cancelled")
    assert read_results(outcome.run_dir)["status"] == "cancelled"


def test_a_raising_listener_does_not_break_a_request(model, tmp_path):
    def listener(event):
        raise ValueError("client went away")

    outcome = _service(model, tmp_path).analyze(TEXTS, ANALYZERS, listener=listener)
    assert outcome.status == "complete" and all(e["status"] == "ok" for e in outcome.analyzers.values())


def test_runs_lists_and_reads_earlier_runs_confined_to_runs_dir(model, tmp_path):
    service = _service(model, tmp_path)
    a = service.analyze(TEXTS, {"attention_entropy": {}})
    b = service.analyze(TEXTS, {"activation_stats": {}})
    listed = service.runs()
    assert [r["id"] for r in listed] == [b.run_id, a.run_id]  # newest first
    assert listed[0]["status"] == "complete" and listed[0]["analyzers"] == ["activation_stats"]
    assert service.run(a.run_id) == read_results(a.run_dir)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "results.json").write_text("{}")
    for bad in ("../outside", "..", "", "no_such_run", "/etc", "a/b"):
        with pytest.raises(ConfigError):
            service.run(bad)
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50 and all(RUN_ID.match(i) for i in ids) and sorted(ids)[0] < new_run_id()
