"""The pipeline end to end: Python API, Hydra CLI, sinks, failures and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from interpsuite import InterpretabilityPipeline
from interpsuite.analyzer import Analyzer, check_heads
from interpsuite.errors import AnalyzerError, ConfigError, ModelNotFoundError
from interpsuite.hookspecs import hookimpl
from interpsuite.plugins import get_registry
from interpsuite.results import Result, contract_errors, read_results

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Water boils at one hundred degrees."]


def _pipeline(tmp_path, **kwargs):
    defaults = dict(
        model="tiny_llama",
        data=TEXTS,
        analyzers={"activation_stats": {}},
        output_dir=tmp_path / "run",
        sinks=["rundir"],
        progress=False,
    )
    defaults.update(kwargs)
    return InterpretabilityPipeline(**defaults)


def _cli(args, cwd, env=None, timeout=600):
    full_env = {**os.environ, "WANDB_SILENT": "true", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "interpsuite", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- analyzers used only by these tests --------------------------------------------------


class Exploding(Analyzer):
    name = "test_exploding"

    def run(self, ctx):
        with ctx.model.hooks(capture=["blocks.0.resid_post"]):
            raise RuntimeError("deliberate failure")


@dataclass
class HeadConfig:
    heads: list[int] | None = None


class HeadPicker(Analyzer):
    name = "test_heads"
    Config = HeadConfig

    def validate(self, info, cfg):
        check_heads(info, cfg.heads, "test_heads.heads")

    def run(self, ctx):
        return Result(metrics={"n": float(len(self.cfg.heads or []))})


class TestPlugin:
    @hookimpl
    def interpsuite_analyzers(self):
        return [Exploding, HeadPicker]


@pytest.fixture
def registry():
    return get_registry(extra_plugins=[TestPlugin()])


# --- the Python API ---------------------------------------------------------------------------


def test_python_api_writes_a_contract_conforming_run(tmp_path):
    report = _pipeline(tmp_path).run()
    payload = read_results(report.run_dir)
    assert contract_errors(payload, report.run_dir) == []
    entry = payload["analyzers"]["activation_stats"]
    assert entry["status"] == "ok" and all(c["passed"] for c in entry["checks"].values())
    assert payload["inputs"]["count"] == 2
    assert (report.run_dir / "config.resolved.json").is_file()
    for png, pdf in entry["figures"].values():
        assert (report.run_dir / png).read_bytes()[:4] == b"\x89PNG"
        assert (report.run_dir / pdf).read_bytes()[:4] == b"%PDF"


def test_a_failing_analyzer_is_recorded_and_the_others_still_run(tmp_path, registry):
    report = _pipeline(tmp_path, analyzers={"test_exploding": {}, "activation_stats": {}}, registry=registry).run()
    payload = read_results(report.run_dir)
    assert payload["analyzers"]["test_exploding"]["status"] == "failed"
    assert "deliberate failure" in payload["analyzers"]["test_exploding"]["error"]
    assert payload["analyzers"]["activation_stats"]["status"] == "ok"
    assert (report.run_dir / "logs" / "test_exploding.traceback.txt").is_file()
    assert contract_errors(payload, report.run_dir) == []


def test_fail_fast_stops_but_keeps_what_was_done(tmp_path, registry):
    pipeline = _pipeline(
        tmp_path, analyzers={"activation_stats": {}, "test_exploding": {}}, registry=registry, fail_fast=True
    )
    with pytest.raises(AnalyzerError, match="test_exploding failed"):
        pipeline.run()
    payload = read_results(tmp_path / "run")
    assert payload["analyzers"]["activation_stats"]["status"] == "ok"
    assert payload["analyzers"]["test_exploding"]["status"] == "failed"


def test_wandb_offline_run_is_written_under_the_run_dir(tmp_path):
    report = _pipeline(tmp_path, sinks=["rundir", "wandb"], wandb={"mode": "offline"}).run()
    runs = list((report.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_a_wandb_failure_is_a_warning_and_local_results_survive(tmp_path, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="no W&B today"):
        report = _pipeline(tmp_path, sinks=["rundir", "wandb"]).run()
    payload = read_results(report.run_dir)
    assert payload["analyzers"]["activation_stats"]["status"] == "ok"
    assert payload["sinks"]["wandb"] == {"status": "failed", "error": "failed to start: RuntimeError: no W&B today"}
    assert report.exit_code == 0  # a sink failure is recorded, not an analyzer failure


# --- bad input: one clear message, before any weights load -------------------------------------


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if anything tries to load model weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the config was validated")

    monkeypatch.setattr("interpsuite.pipeline.load_model", refuse)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"analyzers": {"no_such_analyzer": {}}},
            "unknown analyzer 'no_such_analyzer'; registered analyzers: .*activation_stats",
        ),
        ({"analyzers": {"activation_stats": {"layers": [5]}}}, "layer 5 out of range; tiny_llama has layers 0..1"),
        ({"analyzers": {"activation_stats": {"hook_points": ["attn.q"]}}}, "not supported; choose from"),
        (
            {"analyzers": {"activation_stats": {"layerz": [0]}}},
            "Key 'layerz' not in 'ActivationStatsConfig'.*Options of activation_stats: hook_points",
        ),
        ({"analyzers": {"activation_stats": {"layers": "all"}}}, "analyzers.activation_stats"),
        ({"analyzers": {}}, "no analyzers selected"),
        ({"data": []}, "no inputs"),
        ({"data": ["   ", ""]}, "is empty"),
        ({"data": {"dataset": "nope"}}, "unknown dataset 'nope'; registered datasets: english, ioi"),
        ({"data": "/nonexistent/file.txt"}, "does not exist"),
        ({"sinks": ["rundir", "s3"]}, "unknown sink 's3'"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
    ],
)
def test_config_mistakes_are_clear_and_cheap(tmp_path, no_weights, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        _pipeline(tmp_path, **kwargs).run()
    assert not (tmp_path / "run").exists()


def test_head_index_out_of_range(tmp_path, no_weights, registry):
    with pytest.raises(ConfigError, match="head 7 out of range; tiny_llama has heads 0..3"):
        _pipeline(tmp_path, analyzers={"test_heads": {"heads": [0, 7]}}, registry=registry).run()


def test_unknown_model_is_one_clear_error(tmp_path, no_weights, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="Embedded models: smollm2, minilm"):
        _pipeline(tmp_path, model="not-a-real/model").run()


def test_encoder_models_run_too(tmp_path):
    report = _pipeline(tmp_path, model="tiny_bert").run()
    entry = report.payload["analyzers"]["activation_stats"]
    assert entry["status"] == "ok"
    assert "residual_decomposition_rel_error" not in entry["checks"]  # post-norm: not additive


# --- the Hydra CLI --------------------------------------------------------------------------------


def test_cli_config_error_is_one_line_without_traceback(tmp_path):
    proc = _cli(["+experiment=quickstart", "model=tiny_llama", "analyzers.activation_stats.layers=[9]"], tmp_path)
    assert proc.returncode == 2
    assert "interpsuite: error: activation_stats.layers: layer 9 out of range" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_multirun_over_models(tmp_path):
    proc = _cli(["-m", "+experiment=quickstart", "model=tiny_llama,tiny_gpt2", "wandb.mode=disabled"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = sorted(tmp_path.glob("multirun/quickstart/*/*/results.json"))
    assert [json.loads(p.read_text())["model"]["name"] for p in results] == ["tiny_llama", "tiny_gpt2"]


@pytest.mark.slow
def test_quickstart_on_smollm2_cli_and_python_api_agree(tmp_path):
    """The README's quickstart: SmolLM2, offline, W&B offline; the Python API gives the same numbers."""
    proc = _cli(["+experiment=quickstart", "hydra.run.dir=quickstart_run"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_dir = tmp_path / "quickstart_run"
    payload = read_results(run_dir)
    assert contract_errors(payload, run_dir) == []
    assert payload["model"] == {
        "name": "smollm2",
        "architecture": "llama",
        "n_layers": 30,
        "n_heads": 9,
        "n_kv_heads": 3,
        "d_model": 576,
        "d_mlp": 1536,
    }
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert (run_dir / "figures" / "activation_stats" / "layer_profile.png").is_file()

    import yaml

    texts = yaml.safe_load((REPO / "conf" / "data" / "quickstart.yaml").read_text())["texts"]
    report = InterpretabilityPipeline(
        model="smollm2",
        data={"texts": texts, "max_length": 64},
        analyzers={"activation_stats": {}},
        output_dir=tmp_path / "python_run",
        sinks=["rundir"],
        progress=False,
    ).run()
    cli_metrics = payload["analyzers"]["activation_stats"]["metrics"]
    api_metrics = report.payload["analyzers"]["activation_stats"]["metrics"]
    assert cli_metrics.keys() == api_metrics.keys()
    for key, value in cli_metrics.items():
        assert api_metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_parquet_tables_or_a_clear_message(tmp_path):
    import importlib.util

    pipeline = _pipeline(tmp_path, table_format="parquet")
    if importlib.util.find_spec("pyarrow") is None:
        with pytest.raises(ConfigError, match="needs pyarrow"):
            pipeline.run()
        return
    import pandas as pd

    report = pipeline.run()
    rel = report.payload["analyzers"]["activation_stats"]["tables"]["layer_stats"]
    assert rel.endswith(".parquet") and len(pd.read_parquet(report.run_dir / rel)) == 4


def test_causal_lm_analyzers_are_skipped_on_encoders_when_others_can_run(tiny_models, tmp_path):
    """An experiment such as the quickstart still runs on an encoder; the causal-only part says why it did not."""
    report = InterpretabilityPipeline(
        model=tiny_models["tiny_bert"],
        data=["Hello there", "Hi"],
        analyzers={"activation_stats": {}, "logit_lens": {}},
        output_dir=tmp_path,
        sinks=["rundir"],
        progress=False,
    ).run()
    payload = read_results(tmp_path)
    assert payload["analyzers"]["activation_stats"]["status"] == "ok"
    skipped = payload["analyzers"]["logit_lens"]
    assert skipped["status"] == "skipped" and "needs a causal LM" in skipped["error"]
    assert contract_errors(payload, tmp_path) == [] and report.ok
