"""Metrics over training (`+experiment=temporal checkpoints=...`): checkpoints, monitor dirs, change points.

Checkpoints are a tiny Llama with perturbed weights saved the way training saves them (HF
folders `checkpoint-N`, a Lightning-style .ckpt); the engine's per-checkpoint metrics must be
exactly those of separate pipeline runs on each checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from interpsuite import InterpretabilityPipeline
from interpsuite.__main__ import run_cli
from interpsuite.checkpoints import discover
from interpsuite.errors import ConfigError
from interpsuite.figure_command import redraw
from interpsuite.models import load_model
from interpsuite.results import contract_errors, read_results
from interpsuite.temporal import best_split, change_points, run_temporal, temporal_plan

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."]
ANALYZERS = {"head_classification": {"ablation": False, "n_sequences": 2, "seq_len": 8}, "attention_entropy": {}}
RUN = {"sinks": ["rundir"], "progress": False, "figures": {"formats": ["png"]}}
HEATMAP = "head_classification.head_scores.induction"
STEPS = (5, 10, 20)  # "checkpoint-5" sorts after "checkpoint-20" by name: the order must come from the step


def _save_checkpoints(root: Path, name: str = "tiny_llama", steps=STEPS, seed: int = 0) -> list[Path]:
    model = load_model(name)
    hf = model.hf_model
    generator = torch.Generator().manual_seed(seed)
    folders = []
    for step in steps:
        with torch.no_grad():
            for parameter in hf.parameters():
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        folder = root / f"checkpoint-{step}"
        hf.save_pretrained(folder)
        model.tokenizer.save_pretrained(folder)
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        folders.append(folder)
    return folders


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trainer_out")
    _save_checkpoints(root)
    return root


@pytest.fixture(scope="module")
def temporal_run(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("temporal") / "run"
    plan = temporal_plan(checkpoints, ANALYZERS, TEXTS, out, temporal={"heatmaps": [HEATMAP]}, **RUN)
    plan.validate()
    return plan, run_temporal(plan)


def _metrics(run_dir: Path) -> dict[str, dict[str, float]]:
    return {name: entry["metrics"] for name, entry in read_results(run_dir)["analyzers"].items()}


def test_checkpoints_are_found_and_sorted_by_step(checkpoints):
    found = discover(str(checkpoints))
    assert [c.step for c in found] == list(STEPS)
    assert [c.path.name for c in found] == [f"checkpoint-{s}" for s in STEPS]
    assert {c.kind for c in found} == {"hf"} and found[0].info.architecture == "llama"


def test_per_checkpoint_metrics_equal_separate_pipeline_runs(checkpoints, temporal_run, tmp_path):
    plan, outcome = temporal_run
    assert outcome.exit_code == 0
    table = outcome.result.tables["metrics"]
    assert sorted(table["step"].unique()) == list(STEPS)
    for step in STEPS:
        alone = InterpretabilityPipeline(
            model=str(checkpoints / f"checkpoint-{step}"),
            data=TEXTS,
            analyzers=ANALYZERS,
            output_dir=tmp_path / f"alone{step}",
            **RUN,
        ).run()
        expected = _metrics(alone.run_dir)
        assert _metrics(plan.output_dir / "checkpoints" / f"step_{step:06d}") == expected
        rows = table[table["step"] == step]
        from_table = {(a, m): v for a, m, v in zip(rows["analyzer"], rows["metric"], rows["value"], strict=True)}
        assert from_table == {(a, m): v for a, values in expected.items() for m, v in values.items()}


def test_summary_is_a_run_directory_whose_figures_redraw(temporal_run, tmp_path):
    plan, outcome = temporal_run
    payload = read_results(plan.output_dir)
    assert contract_errors(payload, plan.output_dir) == []
    entry = payload["analyzers"]["temporal"]
    assert set(entry["tables"]) == {"metrics", "changes", "heads"}
    expected = {
        "trend_head_classification",
        "trend_attention_entropy",
        "top_changes",
        "heatmap_" + HEATMAP.replace(".", "_"),
    }
    assert set(entry["figures"]) == expected == set(entry["figure_data"])
    heads = outcome.result.tables["heads"]
    assert len(heads) == len(STEPS) * 2 * 4  # steps x layers x heads of the tiny model
    step10 = pd.read_csv(plan.output_dir / "checkpoints" / "step_000010" / "tables/head_classification/head_scores.csv")
    mine = heads[heads["step"] == 10].sort_values(["layer", "head"])
    assert np.array_equal(mine["value"].to_numpy(), step10.sort_values(["layer", "head"])["induction"].to_numpy())
    report = redraw(plan.output_dir, tmp_path / "redraw", style="run", formats=("png",))
    assert report.exit_code == 0 and set(report.written) == {f"temporal.{name}" for name in expected}
    for name in expected:
        original = mpimg.imread(plan.output_dir / "figures" / "temporal" / f"{name}.png")
        assert np.array_equal(mpimg.imread(tmp_path / "redraw" / f"temporal-{name}.png"), original)
    assert redraw(plan.output_dir, tmp_path / "paper", style="paper", formats=("pdf",)).exit_code == 0


def test_change_points_find_a_known_jump():
    steps = [0, 10, 20, 30, 40, 50, 60]
    rows = [(s, "a", "jump", v) for s, v in zip(steps, [1.0, 1.0, 1.2, 1.0, 5.0, 5.1, 5.0], strict=True)]
    rows += [(s, "a", "flat", 3.0) for s in steps]
    rows += [(s, "b", "spike", v) for s, v in zip(steps, [0, 0, 0, 9, 0, 0, 0], strict=True)]
    changes = change_points(pd.DataFrame(rows, columns=["step", "analyzer", "metric", "value"])).set_index("metric")
    jump = changes.loc["jump"]
    assert (jump["largest_change_from"], jump["largest_change_to"], jump["split_step"]) == (30, 40, 40)
    assert jump["mean_before"] == pytest.approx(1.05) and jump["mean_after"] == pytest.approx(15.1 / 3)
    assert pd.isna(changes.loc["flat", "split_step"]) and changes.loc["flat", "relative_shift"] == 0
    spike = changes.loc["spike"]  # the largest step-to-step change is the way up (the first of equal ones)
    assert (spike["largest_change_from"], spike["largest_change_to"], spike["largest_change"]) == (20, 30, 9)
    assert list(changes.index[:1]) == ["jump"]  # ranked by the shift relative to the metric's range


def _sse(values: np.ndarray) -> float:
    return float(((values - values.mean()) ** 2).sum())


def test_best_split_is_the_least_squares_two_mean_fit():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 12))
        values = rng.normal(size=n) + 3.0 * (np.arange(n) >= rng.integers(0, n))
        sse = [_sse(values[:k]) + _sse(values[k:]) for k in range(1, n)]
        assert best_split(values) == int(np.argmin(sse)) + 1


def _lightning_ckpt(path: Path, state: dict, step: int) -> Path:
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "global_step": step, "epoch": 1}, path)
    return path


def test_lightning_ckpt_gives_the_metrics_of_the_hf_folder_with_equal_weights(checkpoints, temporal_run, tmp_path):
    plan, _ = temporal_run
    state = load_model(str(checkpoints / "checkpoint-10")).hf_model.state_dict()
    ckpt = _lightning_ckpt(tmp_path / "epoch=1-step=10.ckpt", state, 10)
    assert torch.load(ckpt, weights_only=True)["global_step"] == 10  # plain tensors and values: weights_only reads it
    found = discover([str(ckpt)], "tiny_llama")
    assert [(c.kind, c.step, c.prefix) for c in found] == [("lightning", 10, "model.")]
    out = tmp_path / "run"
    lightning = temporal_plan(
        [str(ckpt)], ANALYZERS, TEXTS, out, temporal={"base_model": "tiny_llama", "heatmaps": []}, **RUN
    )
    lightning.validate()
    assert run_temporal(lightning).exit_code == 0
    assert _metrics(out / "checkpoints" / "step_000010") == _metrics(plan.output_dir / "checkpoints" / "step_000010")


def _bad_inputs(root: Path, checkpoints: Path) -> dict[str, tuple[list[str] | str, str | None, str]]:
    """name -> (checkpoints value, base_model, the expected wording)."""
    (root / "empty").mkdir()
    gpt2 = _save_checkpoints(root / "gpt2", "tiny_gpt2", steps=(30,))[0]
    state = load_model("tiny_llama").hf_model.state_dict()
    plain = _lightning_ckpt(root / "plain.ckpt", state, 40)
    wrong = dict(state)
    key = "model.embed_tokens.weight"
    wrong[key] = wrong[key][:100]
    mismatched = _lightning_ckpt(root / "mismatched.ckpt", wrong, 50)
    return {
        "empty": (str(root / "empty"), None, f"no checkpoints in {root / 'empty'} (looked for monitor.json"),
        "mixed": (
            [str(checkpoints / "checkpoint-5"), str(gpt2)],
            None,
            f"checkpoints of different architectures: {checkpoints / 'checkpoint-5'} (model_type llama, layers 2, "
            f"d_model 64, heads 4, vocab 258) and {gpt2} (model_type gpt2",
        ),
        "no_base": (str(plain), None, f"checkpoint {plain} is a .ckpt without an HF config; set temporal.base_model="),
        "mismatched": (
            str(mismatched),
            "tiny_llama",
            f"checkpoint {mismatched}: tensor 'model.{key}' has shape [100, 64] but temporal.base_model has [258, 64]",
        ),
    }


@pytest.fixture(scope="module")
def bad_inputs(checkpoints, tmp_path_factory):
    return _bad_inputs(tmp_path_factory.mktemp("bad"), checkpoints)


@pytest.mark.parametrize("case", ["empty", "mixed", "no_base", "mismatched"])
def test_bad_inputs_are_one_config_error_and_exit_2(case, bad_inputs, tmp_path, capsys, monkeypatch):
    source, base, wording = bad_inputs[case]
    with pytest.raises(ConfigError) as err:
        temporal_plan(source, ANALYZERS, TEXTS, tmp_path / "py", temporal={"base_model": base}, **RUN)
    assert wording in str(err.value) and "\n" not in str(err.value)
    import interpsuite.models.sources as sources

    monkeypatch.setattr(sources, "load_weights", lambda *a, **k: pytest.fail("weights loaded"))
    value = source if isinstance(source, str) else "[" + ",".join(source) + "]"
    argv = ["+experiment=temporal", f"checkpoints={value}", f"hydra.run.dir={tmp_path / 'cli'}"]
    if base:
        argv.append(f"temporal.base_model={base}")
    assert run_cli(argv) == 2
    assert wording in capsys.readouterr().err
    assert not (tmp_path / "cli").exists()


def test_checkpoints_outside_the_cli_runner_are_refused_by_the_plain_pipeline(checkpoints):
    with pytest.raises(ConfigError, match="makes one run per checkpoint"):
        InterpretabilityPipeline.from_config({"model": "tiny_llama", "checkpoints": str(checkpoints)})


def _monitor_dir(root: Path) -> Path:
    """A monitor directory in the documented format, its step runs made by quick tiny pipeline runs."""
    steps = [0, 50, 100]
    lines = []
    for index, step in enumerate(steps):
        name = f"step_{step:06d}"
        model = load_model("tiny_llama", seed=index)  # other weights at each step
        InterpretabilityPipeline(
            model=model, data=TEXTS, analyzers={"attention_entropy": {}}, output_dir=root / name, **RUN
        ).run()
        metrics = {f"attention_entropy.{k}": v for k, v in _metrics(root / name)["attention_entropy"].items()}
        train = {"loss": 5.0 - index, "learning_rate": 1e-3} if index else {}
        lines.append(
            {"step": step, "epoch": None, "run_dir": name, "duration_s": 0.1, "metrics": metrics, "train": train}
        )
    monitor = {
        "format_version": 1,
        "analyzers": {"attention_entropy": {}},
        "steps": steps,
        "model": model.info.contract_dict(),
        "train_time_s": 10.0,
        "monitor_time_s": 1.0,
        "monitor_fraction": 0.1,
        "status": "complete",
    }
    (root / "monitor.json").write_text(json.dumps(monitor))
    (root / "steps.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_monitor_directory_is_summarised_without_loading_a_model(tmp_path, monkeypatch):
    monitor = _monitor_dir(tmp_path / "monitor")
    import interpsuite.models.sources as sources
    import interpsuite.pipeline as pipeline

    monkeypatch.setattr(sources, "load_weights", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    plan = temporal_plan(str(monitor), ANALYZERS, TEXTS, tmp_path / "out", temporal={"animate": True}, **RUN)
    assert plan.pipelines == [] and [s.step for s in plan.monitor.steps] == [0, 50, 100]
    outcome = run_temporal(plan)
    assert outcome.exit_code == 0 and outcome.reports == []
    table = outcome.result.tables["metrics"]
    loss = table[(table["analyzer"] == "train") & (table["metric"] == "loss")]
    assert list(zip(loss["step"], loss["value"], strict=True)) == [(50, 4.0), (100, 3.0)]
    for step in (0, 50, 100):
        rows = table[(table["step"] == step) & (table["analyzer"] == "attention_entropy")]
        assert (
            dict(zip(rows["metric"], rows["value"], strict=True))
            == _metrics(monitor / f"step_{step:06d}")["attention_entropy"]
        )
    payload = read_results(tmp_path / "out")
    assert contract_errors(payload, tmp_path / "out") == []
    assert payload["model"] == json.loads((monitor / "monitor.json").read_text())["model"]
    assert {"trend_train", "trend_attention_entropy"} <= set(payload["analyzers"]["temporal"]["figures"])
    assert "heatmap_attention_entropy_entropy_by_head_mean_entropy" in payload["analyzers"]["temporal"]["figures"]
    gif = tmp_path / "out" / "animations" / "attention_entropy-entropy_by_head-mean_entropy.gif"
    assert gif.relative_to(tmp_path / "out").as_posix() in outcome.result.summary["animations"]
    with Image.open(gif) as image:
        assert image.n_frames == 3  # one frame per step
    out = tmp_path / "cli"
    assert (
        run_cli(["+experiment=temporal", f"checkpoints={monitor}", f"hydra.run.dir={out}", "figures.formats=[png]"])
        == 0
    )
    assert contract_errors(read_results(out), out) == []


def test_mp4_without_ffmpeg_and_bad_options_are_refused_before_any_run(checkpoints, tmp_path, monkeypatch):
    from matplotlib import animation

    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    with pytest.raises(ConfigError, match="temporal.animate=mp4 needs ffmpeg on the PATH"):
        temporal_plan(checkpoints, ANALYZERS, TEXTS, tmp_path / "a", temporal={"animate": "mp4"}, **RUN)
    with pytest.raises(ConfigError, match="temporal.heatmaps: 'induction' is not analyzer.table.column"):
        temporal_plan(checkpoints, ANALYZERS, TEXTS, tmp_path / "b", temporal={"heatmaps": ["induction"]}, **RUN)
    with pytest.raises(ConfigError, match="temporal: unknown key 'animation'"):
        temporal_plan(checkpoints, ANALYZERS, TEXTS, tmp_path / "c", temporal={"animation": True}, **RUN)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
