"""The peer benchmark harness (benchmarks/peers) on tiny_llama: every cell's numbers agree with
interpsuite's, a cell runs in its own process and records its facts, and the report is right.

Peer cells whose library is not installed are skipped (they belong to the `peers` extra, the
SAELens cell to the `sae` extra). The concurrency workload's peer cells share one model between
threads and may race: their numbers are not required to agree, only reported."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PEERS = Path(__file__).resolve().parent.parent / "benchmarks" / "peers"
sys.path.insert(0, str(PEERS))

import peer_cell  # noqa: E402
import peer_report  # noqa: E402
from peer_workloads import build_problem, run_threads, sae_spec, thread_slices  # noqa: E402

from interpsuite.errors import ConfigError  # noqa: E402

_spec = importlib.util.spec_from_file_location("interpsuite_peers_run", PEERS / "run.py")
peers_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers_run)

LIBRARY_IMPORT = {
    "impl_tlens": "transformer_lens",
    "impl_nnsight": "nnsight",
    "impl_captum": "captum",
    "impl_saelens": "sae_lens",
}
#: peer cells of the workloads that report races: they may differ from the reference by design
RACING = {(workload, name) for workload in peer_report.RACE_REPORTED for name, _ in peer_cell.CELLS[workload][1:]}
ALL_CELLS = [
    (workload, name, module)
    for workload, cells in peer_cell.CELLS.items()
    for name, module in cells
    if (workload, name) not in peer_cell.NO_VALUES and (workload, name) not in RACING
]


def _needs(module: str) -> None:
    library = LIBRARY_IMPORT.get(module)
    if library is not None and importlib.util.find_spec(library) is None:
        pytest.skip(f"{library} is not installed (the peers extra)")


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    return build_problem("tiny_llama", "cpu", quick=True)


@pytest.fixture(scope="module")
def references(problem):
    """Each workload's reference (interpsuite) numbers, computed once."""
    out = {}
    for workload, cells in peer_cell.CELLS.items():
        name, module = cells[0]
        out[workload] = importlib.import_module(module).BUILDERS[(workload, name)](problem).run().detach().double()
    return out


def test_problem_is_the_ioi_pair(problem):
    assert problem.clean.input_ids.shape == problem.corrupted.input_ids.shape
    differ = (problem.clean.input_ids != problem.corrupted.input_ids).nonzero()
    assert differ.shape[0] > 0  # the pair differs (at the second name) and nowhere near the start
    assert problem.answers[0] != problem.answers[1]
    assert problem.heads == [(layer, head) for layer in range(2) for head in range(4)]


@pytest.mark.parametrize(("workload", "name", "module"), ALL_CELLS, ids=[f"{w}-{n}" for w, n, _ in ALL_CELLS])
def test_every_cell_agrees_with_interpsuite(problem, references, workload, name, module):
    _needs(module)
    cell = importlib.import_module(module).BUILDERS[(workload, name)](problem)
    values = cell.run().detach().double()
    reference = references[workload]
    assert values.shape == reference.shape
    assert (values - reference).abs().max().item() <= peer_report.TOLERANCE
    assert cell.attention in ("eager", "sdpa", str(problem.model.hf_model.config._attn_implementation))


def test_sweeps_measure_something(problem, references):
    """The numbers compared are not trivially equal: ablations and patches move the metric."""
    assert references["head_sweep"].shape == (8,)
    assert references["head_sweep"].std() > 0
    grid = references["patching"].view(2, problem.width)
    differ = int((problem.clean.input_ids != problem.corrupted.input_ids).nonzero()[0, 1])
    # patching a position before the first difference writes the corrupted run's own value: no effect
    assert torch.allclose(grid[:, :differ], grid[0, 0].expand(2, differ), atol=1e-5)
    assert grid[0, differ] != grid[0, 0]
    patterns = references["attention"]
    assert torch.allclose(patterns.sum(-1), torch.ones_like(patterns.sum(-1)), atol=1e-5)


def test_sae_workload_edits_move_the_logits(problem, references):
    """The SAE's features partly fire on the prompt, and each edit changes the last logits."""
    spec = sae_spec(problem)
    assert spec.hook == "blocks.1.resid_post" and spec.W_enc.shape == (64, 512)
    with torch.no_grad():
        activation = problem.model.forward(problem.clean, capture=[spec.hook]).cache[spec.hook]
    firing = (spec.encode(activation) > 0).float().mean().item()
    assert 0.05 < firing < 0.95
    logits = references["sae"]
    assert logits.shape == (len(spec.features), problem.model.info.vocab_size)
    assert len(set(spec.features)) == len(spec.features)
    assert (logits[1:] - logits[:-1]).abs().amax(dim=1).min() > 1e-3  # every edit differs from the last


def test_concurrency_equals_the_sequential_head_sweep(problem, references):
    """4 threads on one HookedModel give bitwise the numbers of the same slices run one after
    another, and the head_sweep workload's numbers up to float rounding (other batching)."""
    impl = importlib.import_module("impl_interpsuite")
    values = references["concurrency"].float()
    sequential = torch.empty(len(problem.heads))
    for indices in thread_slices(len(problem.heads)):
        sequential[indices] = impl._head_sweep(problem, impl.README_BATCH_SIZE, indices).float()
    assert torch.equal(values, sequential)
    assert (values.double() - references["head_sweep"]).abs().max() <= 1e-6
    assert values.std() > 0


@pytest.mark.parametrize(("workload", "name"), sorted(RACING), ids=[f"{w}-{n}" for w, n in sorted(RACING)])
def test_racing_peer_cells_finish(problem, workload, name):
    """A peer on 4 threads may race, but its cell finishes: one number per head, or an error."""
    module = dict(peer_cell.CELLS[workload])[name]
    _needs(module)
    cell = importlib.import_module(module).BUILDERS[(workload, name)](problem)
    try:
        values = cell.run()
    except Exception as error:  # a peer that refuses threads: recorded as the cell's error
        assert str(error)
    else:
        assert values.shape == (len(problem.heads),) and torch.isfinite(values).all()


def test_concurrency_cell_raises_when_threads_disagree(problem, monkeypatch):
    """The interpsuite cell's self-check can fail: numbers off by one ulp make it raise."""
    impl = importlib.import_module("impl_interpsuite")
    cell = impl.BUILDERS[("concurrency", "interpsuite")](problem)
    monkeypatch.setattr(impl, "run_threads", lambda job, n: torch.nextafter(run_threads(job, n), torch.tensor(9.0)))
    with pytest.raises(RuntimeError, match="differ from the sequential slices"):
        cell.run()


def test_thread_slices_cover_every_item_once():
    slices = thread_slices(10)
    assert len(slices) == 4 and sorted(i for part in slices for i in part) == list(range(10))
    assert run_threads(lambda indices: torch.tensor(indices, dtype=torch.float32) * 2, 10).tolist() == [
        2.0 * i for i in range(10)
    ]


def test_cell_subprocess_records_its_facts(tmp_path):
    out = tmp_path / "cell"
    command = [
        sys.executable,
        str(PEERS / "peer_cell.py"),
        "--workload",
        "head_sweep",
        "--impl",
        "plain",
        "--model",
        "tiny_llama",
        "--threads",
        "1",
        "--repeats",
        "2",
        "--quick",
        "--out",
        str(out),
    ]
    subprocess.run(command, env=peers_run.cell_env(1), check=True, capture_output=True, timeout=600)
    record = json.loads((out / "cell.json").read_text())
    assert record["status"] == "ok"
    assert record["torch_threads"] == 1 and record["attention"] == "sdpa"
    assert len(record["times_s"]) == 2 and record["median_s"] > 0
    assert record["peak_rss_mib"] >= record["rss_after_setup_mib"] > 0
    assert len(record["load_average_start"]) == 3
    from safetensors.numpy import load_file

    assert load_file(str(out / "values.safetensors"))["values"].shape == (8,)


def test_missing_library_skips_the_cell(tmp_path, monkeypatch):
    monkeypatch.setitem(peer_cell.REQUIRES, "impl_nnsight", "no-such-distribution-for-interpsuite")
    threads = torch.get_num_threads()
    record = peer_cell.run_cell("attention", "nnsight", "tiny_llama", "cpu", 1, 1, 1, True, tmp_path)
    assert torch.get_num_threads() == threads  # the cell's setting does not leak into this process
    assert record["status"] == "skipped" and "no-such-distribution" in record["reason"]
    assert not (tmp_path / "values.safetensors").exists()


def test_missing_saelens_skips_the_sae_cell(tmp_path, monkeypatch):
    monkeypatch.setitem(peer_cell.REQUIRES, "impl_saelens", "no-such-distribution-for-interpsuite")
    threads = torch.get_num_threads()
    record = peer_cell.run_cell("sae", "sae_lens", "tiny_llama", "cpu", 1, 1, 1, True, tmp_path)
    assert torch.get_num_threads() == threads
    assert record["status"] == "skipped" and "interpsuite[sae]" in record["reason"]


def test_an_incompatible_library_skips_the_cell(tmp_path, monkeypatch):
    """SAELens 6 cannot import beside TransformerLens 4: a version conflict is a skip, not an error."""
    monkeypatch.setitem(peer_cell.CONFLICTS, "impl_saelens", ("torch", 1, "a conflict for the test"))
    record = peer_cell.run_cell("sae", "sae_lens", "tiny_llama", "cpu", 1, 1, 1, True, tmp_path)
    assert record["status"] == "skipped" and "cannot run with torch" in record["reason"]
    monkeypatch.setitem(peer_cell.CONFLICTS, "impl_saelens", ("torch", 999, "no conflict"))
    assert peer_cell._conflict("impl_saelens") is None


def test_agreement_checker():
    values = {"a": np.array([1.0, 2.0]), "b": np.array([1.0, 2.00005]), "c": np.array([1.0, 2.1]), "d": np.zeros(3)}
    result = peer_report.agreement(values, "a")
    assert result["a"]["max_abs_diff_vs_reference"] == 0.0 and result["a"]["agrees"]
    assert result["b"]["agrees"] and result["b"]["max_abs_diff_vs_reference"] == pytest.approx(5e-5)
    assert not result["c"]["agrees"] and result["c"]["max_abs_diff_vs_reference"] == pytest.approx(0.1)
    assert result["d"]["max_abs_diff_vs_reference"] == float("inf") and not result["d"]["agrees"]
    assert result["c"]["max_abs_diff_vs_others"]["b"] == pytest.approx(0.09995)
    # large numbers are compared on their own scale: 2e-3 off at magnitude 400 agrees (5e-6 relative)
    large = peer_report.agreement({"a": np.array([400.0, -3.0]), "e": np.array([400.002, -3.0])}, "a")
    assert large["e"]["max_abs_diff_vs_reference"] == pytest.approx(2e-3)
    assert large["e"]["max_rel_diff_vs_reference"] == pytest.approx(5e-6) and large["e"]["agrees"]
    assert result["c"]["max_rel_diff_vs_reference"] == pytest.approx(0.05) and not result["c"]["agrees"]


def _record(median: float, status: str = "ok") -> dict:
    return {"status": status, "median_s": median, "attention": "sdpa", "library": "x 1", "peak_rss_mib": 100.0}


def test_summary_json_and_markdown(tmp_path):
    cells = {
        "interpsuite": _record(2.0),
        "bare": _record(1.6),
        "plain": _record(8.0),
        "nnsight": {"status": "skipped", "reason": "nnsight is not installed"},
    }
    values = {"interpsuite": np.ones(4), "plain": np.ones(4) + 1e-6}
    summary = peer_report.summarise_workload("capture", cells, values, "interpsuite")
    assert summary["cells"]["plain"]["ratio_to_interpsuite"] == 4.0
    assert summary["capture_over_bare"]["interpsuite"] == 1.25
    assert summary["all_agree"]
    report = {
        "timestamp": "2026-12-01T00:00:00+00:00",
        "settings": {"model": "tiny_llama", "device": "cpu", "threads": 1, "repeats": 3, "warmup": 1, "quick": True},
        "machine": {"processor": "cpu", "cpu_count": 2, "torch": "2", "transformers": "5"},
        "load_average": {"start": [1.0, 1.0, 1.0], "end": [1.0, 1.0, 1.0]},
        "tolerance": 1e-4,
        "workloads": {"capture": summary},
    }
    json_path, md_path = peer_report.write(report, tmp_path, "peers")
    assert json.loads(json_path.read_text())["workloads"]["capture"]["cells"]["plain"]["ratio_to_interpsuite"] == 4.0
    table = md_path.read_text()
    row = "| capture of all residual streams | plain | x 1 | sdpa | 8 | 4.00x | 1.0e-06 | 1.0e-06 | yes | 100 | 0 |"
    assert row in table
    assert "skipped: nnsight is not installed" in table
    assert "interpsuite 1.250x" in table


def _report(workloads: dict) -> dict:
    return {
        "timestamp": "2026-12-01T00:00:00+00:00",
        "settings": {"model": "tiny_llama", "device": "cpu", "threads": 1, "repeats": 3, "warmup": 1, "quick": True},
        "machine": {"processor": "cpu", "cpu_count": 2, "torch": "2", "transformers": "5"},
        "load_average": {"start": [1.0, 1.0, 1.0], "end": [1.0, 1.0, 1.0]},
        "tolerance": 1e-4,
        "workloads": workloads,
        "all_agree": all(summary["all_agree"] for summary in workloads.values()),
        "passes": all(summary["passes"] for summary in workloads.values()),
    }


def test_a_racing_peer_is_reported_without_failing(tmp_path):
    """Concurrency: a peer that differs is marked "no" with the race note, the run exits 0; an
    erroring peer is recorded; but a missing reference, or any other workload's disagreement, fails."""
    cells = {
        "interpsuite": _record(1.0),
        "plain": _record(3.0),
        "transformer_lens": _record(2.0),
        "nnsight": {"status": "error", "reason": "OutOfOrderError: ran past it"},
    }
    values = {"interpsuite": np.arange(4.0), "plain": np.arange(4.0) + 0.5, "transformer_lens": np.arange(4.0)}
    race = peer_report.summarise_workload("concurrency", cells, values, "interpsuite")
    assert race["passes"] and not race["all_agree"]
    assert race["cells"]["plain"]["race_note"] == peer_report.RACE_NOTE
    assert not race["cells"]["plain"]["agreement"]["agrees"] and race["cells"]["plain"]["median_s"] == 3.0
    assert "race_note" not in race["cells"]["transformer_lens"]
    report = _report({"concurrency": race})
    assert peers_run.exit_status(report) == 0
    _, md_path = peer_report.write(report, tmp_path, "peers")
    table = md_path.read_text()
    assert "| plain | x 1 | sdpa | 3 | 3.00x | 5.0e-01 |" in table and f"**no**{peer_report.RACE_MARK}" in table
    assert "error: OutOfOrderError" in table and peer_report.RACE_NOTE in table

    # the interpsuite cell raised (its threads disagreed with the sequential sweep): the run fails
    broken = peer_report.summarise_workload(
        "concurrency", {**cells, "interpsuite": {"status": "error", "reason": "RuntimeError: differ"}},
        {k: v for k, v in values.items() if k != "interpsuite"}, "interpsuite",
    )  # fmt: skip
    assert not broken["passes"] and peers_run.exit_status(_report({"concurrency": broken})) == 1
    # the same disagreement in another workload fails the run
    sweep = peer_report.summarise_workload("head_sweep", cells, values, "interpsuite")
    assert not sweep["passes"] and "race_note" not in sweep["cells"]["plain"]
    assert peers_run.exit_status(_report({"concurrency": race, "head_sweep": sweep})) == 1
    assert f"**no**{peer_report.RACE_MARK}" not in peer_report.markdown(_report({"head_sweep": sweep}))


def test_cell_selection_is_validated():
    args = peers_run.parse_args(["--workload", "ig", "--impl", "captum"])
    assert peers_run.selected_cells(args) == {"ig": ["captum", "captum_last_logit"]}
    args = peers_run.parse_args(["--workload", "sae", "--impl", "sae_lens"])
    assert peers_run.selected_cells(args) == {"sae": ["sae_lens"]}
    assert set(peers_run.selected_cells(peers_run.parse_args(["--all"]))) >= {"sae", "concurrency"}
    args = peers_run.parse_args(["--workload", "head_sweep", "--impl", "interpsuite"])
    assert peers_run.selected_cells(args) == {"head_sweep": ["interpsuite_readme", "interpsuite_best"]}
    with pytest.raises(ConfigError, match="unknown workload"):
        peers_run.selected_cells(peers_run.parse_args(["--workload", "nope"]))
    with pytest.raises(ConfigError, match="no cell matches"):
        peers_run.selected_cells(peers_run.parse_args(["--all", "--impl", "nope"]))


def test_run_writes_json_and_table(tmp_path):
    _needs("impl_captum")
    argv = [
        "--workload",
        "ig",
        "--impl",
        "interpsuite",
        "--impl",
        "captum",
        "--model",
        "tiny_llama",
        "--quick",
        "--threads",
        "1",
        "--repeats",
        "1",
        "--out-dir",
        str(tmp_path),
    ]
    assert peers_run.main(argv) == 0
    report = json.loads((tmp_path / "peers_quick.json").read_text())
    ig = report["workloads"]["ig"]
    assert set(ig["cells"]) == {"interpsuite", "captum", "captum_last_logit"}
    assert ig["all_agree"] and ig["cells"]["captum"]["agreement"]["max_abs_diff_vs_reference"] <= 1e-4
    assert report["passes"] and ig["passes"]
    assert report["machine"]["torch_threads"] >= 1 and report["settings"]["threads"] == 1
    assert "integrated gradients, 50 steps | captum" in (tmp_path / "peers_quick.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_any_cell():
    with pytest.raises(ConfigError, match="no CUDA device"):
        peers_run.check_device("cuda")
    peers_run.check_device("cpu")


def test_the_readme_table_is_printed_from_the_committed_results():
    """README's "How it compares" holds measurements only: exactly what readme_table prints from
    benchmarks/results/peers.json (a racing peer that raised reads "raised", a missing one "—")."""
    import readme_table

    report = json.loads(readme_table.RESULTS.read_text())
    printed = readme_table.table(report)
    readme = (PEERS.parent.parent / "README.md").read_text(encoding="utf-8")
    assert printed in readme
    assert readme_table.cell_text({"status": "error", "error": "x"}, reference=False) == "raised"
    assert readme_table.cell_text({"status": "skipped"}, reference=False) == "—"
    assert readme_table.cell_text(None, reference=False) == "—"
