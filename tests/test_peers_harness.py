"""The peer benchmark harness (benchmarks/peers) on tiny_llama: every cell's numbers agree with
interpsuite's, a cell runs in its own process and records its facts, and the report is right.

Peer cells whose library is not installed are skipped (they belong to the `peers` extra)."""

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
from peer_workloads import build_problem  # noqa: E402

from interpsuite.errors import ConfigError  # noqa: E402

_spec = importlib.util.spec_from_file_location("interpsuite_peers_run", PEERS / "run.py")
peers_run = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peers_run)

LIBRARY_IMPORT = {"impl_tlens": "transformer_lens", "impl_nnsight": "nnsight", "impl_captum": "captum"}
ALL_CELLS = [
    (workload, name, module)
    for workload, cells in peer_cell.CELLS.items()
    for name, module in cells
    if (workload, name) not in peer_cell.NO_VALUES
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


def test_cell_selection_is_validated():
    args = peers_run.parse_args(["--workload", "ig", "--impl", "captum"])
    assert peers_run.selected_cells(args) == {"ig": ["captum", "captum_last_logit"]}
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
    assert report["machine"]["torch_threads"] >= 1 and report["settings"]["threads"] == 1
    assert "integrated gradients, 50 steps | captum" in (tmp_path / "peers_quick.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_before_any_cell():
    with pytest.raises(ConfigError, match="no CUDA device"):
        peers_run.check_device("cuda")
    peers_run.check_device("cpu")
