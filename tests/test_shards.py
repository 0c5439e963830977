"""Sharding work items over jobs (interpsuite.shards), shown on causal tracing.

Exact: three shards run through the pipeline into separate run directories, merged, equal the
unsharded run (tables, metrics, checks, summary, the figures' data); the merged run directory
is a normal one that `interpsuite figures` redraws. A real Hydra multirun with the basic launcher
merges to the same numbers. Bad shard specs and shards that do not belong together are refused
with one line naming what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from interpsuite_plugins.mechanistic.causal_tracing import CausalTracing

from interpsuite import InterpretabilityPipeline
from interpsuite.analyzer import build_config
from interpsuite.cli import main
from interpsuite.errors import AnalyzerError, ConfigError
from interpsuite.results import contract_errors, read_results
from interpsuite.shards import ShardSpec, item_seed, merge_shards, split, write_merged

#: 3 prompts (one per relation, round-robin), 2 noise draws, every kind; 2 layers on the tiny models
OPTIONS = {"max_prompts": 3, "samples": 2, "window": 2}
TEXTS = ["The quick brown fox jumps over the lazy dog."]


def run_pipeline(model, out: Path, options: dict, **kwargs):
    report = InterpretabilityPipeline(
        model=model,
        data=TEXTS,
        analyzers={"causal_tracing": options},
        output_dir=out,
        sinks=["rundir"],
        progress=False,
        **kwargs,
    ).run()
    assert report.ok, report.results["causal_tracing"].error
    return report.results["causal_tracing"]


def sharded(options: dict, index: int, count: int) -> dict:
    return {**options, "shard": {"index": index, "count": count}}


@pytest.fixture(scope="module")
def runs(tiny_models, tmp_path_factory):
    """The unsharded run and its 3 shards, each in its own run directory (tiny_llama)."""
    root = tmp_path_factory.mktemp("shards")
    model = tiny_models["tiny_llama"]
    full = run_pipeline(model, root / "full", OPTIONS)
    shards = [run_pipeline(model, root / f"shard{i}", sharded(OPTIONS, i, 3), draw_figures=False) for i in range(3)]
    return {"root": root, "full": full, "shards": shards, "dirs": [root / f"shard{i}" for i in range(3)]}


def assert_same_result(got, want) -> None:
    assert set(got.tables) == set(want.tables)
    for name, table in want.tables.items():
        pd.testing.assert_frame_equal(got.tables[name], table, check_exact=True)
    assert got.metrics.keys() == want.metrics.keys()
    for key, value in want.metrics.items():  # exact, NaN equal to NaN
        assert got.metrics[key] == value or (np.isnan(value) and np.isnan(got.metrics[key])), key
    assert {k: c.to_dict() for k, c in got.checks.items()} == {k: c.to_dict() for k, c in want.checks.items()}
    assert got.summary == want.summary
    assert set(got.figure_data) == set(want.figure_data)


# --- the protocol ----------------------------------------------------------------------------
def test_split_is_contiguous_balanced_and_covers_every_item():
    assert split(10, 3) == [range(0, 3), range(3, 6), range(6, 10)]
    assert split(4, 4) == [range(i, i + 1) for i in range(4)]
    for n in range(1, 30):
        for count in range(1, n + 1):
            blocks = split(n, count)
            assert [i for block in blocks for i in block] == list(range(n))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    assert ShardSpec(1, 3).items(10) == range(3, 6)
    assert not ShardSpec().sharded and ShardSpec(0, 2).sharded


def test_item_seed_depends_on_seed_and_index_only():
    assert item_seed(0, 5) == item_seed(0, 5)
    assert len({item_seed(0, i) for i in range(100)}) == 100
    assert item_seed(0, 1) != item_seed(1, 1)
    assert 0 <= item_seed(-3, 2) < 2**64  # any int seed


def test_bad_shard_specs_are_one_line_config_errors(tiny_models):
    info = tiny_models["tiny_llama"].info
    for shard, message in (
        ({"index": 3, "count": 3}, r"shard.index=3 with shard.count=3; the index must be in 0..2"),
        ({"index": -1, "count": 2}, r"shard.index=-1 with shard.count=2"),
        ({"index": 0, "count": 0}, r"shard.count=0; give 1 \(no sharding\) or more"),
        ({"index": 0, "count": 4}, r"shard.count=4 but only 3 work item\(s\); use at most 3 shards"),
    ):
        analyzer = CausalTracing(build_config(CausalTracing, {"max_prompts": 3, "shard": shard}))
        with pytest.raises(ConfigError, match=message) as caught:
            analyzer.validate(info, analyzer.cfg)
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="shard.count"):
        build_config(CausalTracing, {"shard": {"count": "many"}})


def test_bad_shard_spec_exits_2_before_any_work(tmp_path, capsys):
    code = main(
        [
            "run",
            "model=tiny_llama",
            "+analyzer=causal_tracing",
            "analyzers.causal_tracing.max_prompts=2",
            "analyzers.causal_tracing.shard.count=3",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    assert code == 2
    assert "shard.count=3 but only 2 work item(s)" in capsys.readouterr().err
    assert not (tmp_path / "run" / "results.json").exists()


# --- causal tracing: merged == unsharded ------------------------------------------------------
def test_each_shard_traces_its_block_and_saves_it(runs):
    prompts = runs["full"].tables["prompts"]
    assert len(prompts) == 3
    for i, result in enumerate(runs["shards"]):
        shard = result.summary["shard"]
        assert shard["index"] == i and shard["count"] == 3 and shard["items"] == [i, i + 1] and shard["saved"] == 1
        assert (runs["dirs"][i] / "data" / "causal_tracing" / "shard" / "shard.json").is_file()
        # a prompt's trace does not depend on the shard that ran it (noise keyed by its index)
        pd.testing.assert_frame_equal(
            result.tables["prompts"], prompts.iloc[[i]].reset_index(drop=True), check_exact=True
        )


def test_merged_shards_equal_the_unsharded_run(runs):
    merged = merge_shards(runs["dirs"], "causal_tracing")
    assert [s.spec.index for s in merged.shards] == [0, 1, 2]
    assert_same_result(merged.result, runs["full"])
    assert "shard" not in merged.result.summary
    assert not merged.result.failed_checks
    # the shards' order on the command line does not matter
    assert_same_result(merge_shards(runs["dirs"][::-1], "causal_tracing").result, runs["full"])


def test_merged_run_directory_matches_and_redraws(runs, capsys):
    root = runs["root"]
    out = root / "merged"
    assert main(["merge-shards", *map(str, runs["dirs"]), "--analyzer", "causal_tracing", "--out", str(out)]) == 0
    assert "merged 3 shards of causal_tracing (3 items)" in capsys.readouterr().out
    payload, full = read_results(out), read_results(root / "full")
    assert contract_errors(payload, out) == []
    got, want = payload["analyzers"]["causal_tracing"], full["analyzers"]["causal_tracing"]
    for key in ("status", "metrics", "checks", "summary", "tables", "figure_data"):
        assert got[key] == want[key], key
    for rel in want["tables"].values():  # the CSV files, byte for byte
        assert (out / rel).read_bytes() == (root / "full" / rel).read_bytes(), rel
    for rel in want["figure_data"].values():  # the data behind every figure, bit for bit
        for name in ("figure.json", "arrays.safetensors"):
            assert (out / rel / name).read_bytes() == (root / "full" / rel / name).read_bytes(), rel
    assert payload["model"] == full["model"]
    assert payload["inputs"]["count"] == full["analyzers"]["causal_tracing"]["inputs"]["count"] == 3
    assert payload["merged_from"]["count"] == 3 and len(payload["merged_from"]["shards"]) == 3
    config = json.loads((out / "config.resolved.json").read_text())
    assert config["analyzers"]["causal_tracing"]["shard"] == {"index": 0, "count": 1}
    assert main(["figures", str(out), "--format", "png", "--out", str(root / "redrawn")]) == 0
    assert sorted(p.name for p in (root / "redrawn").iterdir()) == [
        "causal_tracing-causal_trace.png",
        "causal_tracing-first_prompt_trace.png",
    ]
    # never over an existing run
    assert main(["merge-shards", *map(str, runs["dirs"]), "--out", str(out)]) == 2
    assert "already holds a results.json" in capsys.readouterr().err


# --- shards that do not belong together -------------------------------------------------------
def test_mismatched_shards_are_refused_naming_what_differs(runs, tiny_models, capsys):
    root, dirs = runs["root"], runs["dirs"]
    cases = [
        (dirs[:2], r"shard\(s\) 2 of 3 missing \(given: 0, 1\); pass every shard's run directory"),
        ([dirs[0], dirs[1], dirs[1]], r"shard 1 of 3 given twice"),
        ([dirs[0], dirs[1], root / "full"], r"full has no shard data .*shard.count>1"),
        ([dirs[0], root / "nowhere"], r"nowhere is not a directory; pass shard run directories"),
    ]
    other = root / "other_samples"  # shard 2 of the same split, with another option
    run_pipeline(tiny_models["tiny_llama"], other, sharded({**OPTIONS, "samples": 1}, 2, 3), draw_figures=False)
    cases.append(([dirs[0], dirs[1], other], r"the shards differ in options.samples: .*shard0 has 2, .*has 1"))
    gpt2 = root / "other_model"  # shard 2 on another model
    run_pipeline(tiny_models["tiny_gpt2"], gpt2, sharded(OPTIONS, 2, 3), draw_figures=False)
    cases.append(([dirs[0], dirs[1], gpt2], r"differ in model.name: .*'tiny_llama', .*'tiny_gpt2'"))
    split2 = root / "two_way"  # a shard of a 2-way split
    run_pipeline(tiny_models["tiny_llama"], split2, sharded(OPTIONS, 1, 2), draw_figures=False)
    cases.append(([dirs[0], split2], r"differ in shard.count: .*has 3, .*has 2"))
    for paths, message in cases:
        with pytest.raises(ConfigError, match=message) as caught:
            merge_shards(paths, "causal_tracing")
        assert "\n" not in str(caught.value)
    # the command prints it as one line and exits 2, writing nothing
    out = root / "refused"
    assert main(["merge-shards", str(dirs[0]), str(dirs[1]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("interpsuite: error: merge-shards: shard(s) 2 of 3 missing") and err.count("\n") == 1
    assert not out.exists()


def test_changed_shard_data_and_unshardable_analyzers_are_refused(runs, tmp_path):
    copy = tmp_path / "shard2"
    shutil.copytree(runs["dirs"][2], copy)
    (copy / "data" / "causal_tracing" / "shard" / "items.safetensors").write_bytes(b"not the saved arrays")
    with pytest.raises(ConfigError, match="items.safetensors is missing or changed"):
        merge_shards([runs["dirs"][0], runs["dirs"][1], copy], "causal_tracing")
    with pytest.raises(ConfigError, match="analyzer activation_stats does not support sharding"):
        merge_shards(runs["dirs"], "activation_stats")
    merged = merge_shards(runs["dirs"], "causal_tracing")
    with pytest.raises(ConfigError, match="is the shard run directory"):
        write_merged(merged, runs["dirs"][0])


def test_a_shard_left_without_prompts_still_runs_and_the_merge_says_why(tiny_models, tmp_path):
    """only_correct on a random model keeps no prompt: each shard records 0 prompts; the merge
    refuses with the unsharded run's message."""
    options = {"max_prompts": 2, "samples": 1, "only_correct": True}
    dirs = [tmp_path / f"s{i}" for i in range(2)]
    for i, out in enumerate(dirs):
        result = run_pipeline(tiny_models["tiny_gpt2"], out, sharded(options, i, 2), draw_figures=False)
        assert result.metrics == {"n_prompts": 0.0} and result.summary["shard"]["saved"] == 0
    with pytest.raises(AnalyzerError, match="answers none of the prompts of any shard correctly"):
        merge_shards(dirs, "causal_tracing")


# --- a real Hydra multirun --------------------------------------------------------------------
def test_hydra_multirun_shards_merge_to_the_unsharded_run(runs, tmp_path):
    """One launcher job per shard (basic launcher), merged from the multirun folder."""
    sweep = tmp_path / "sweep"
    options = [f"analyzers.causal_tracing.{key}={value}" for key, value in OPTIONS.items()]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "interpsuite",
            "-m",
            "model=tiny_llama",
            "+analyzer=causal_tracing",
            *options,
            "analyzers.causal_tracing.shard.count=3",
            "analyzers.causal_tracing.shard.index=0,1,2",
            "sinks=[rundir]",
            "progress=false",
            "figures.formats=[png]",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweep.subdir=${hydra.job.num}",
        ],
        cwd=tmp_path,
        env={**os.environ, "WANDB_SILENT": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.glob("*/results.json"))) == 3
    merged = merge_shards([sweep], "causal_tracing")
    assert [s.spec.index for s in merged.shards] == [0, 1, 2]
    assert_same_result(merged.result, runs["full"])
