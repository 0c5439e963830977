"""Every shipped config composes and validates; config plumbing works for installed packages."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from interpsuite import InterpretabilityPipeline
from interpsuite.config import compose, conf_dir
from interpsuite.emergence import plan_emergence
from interpsuite.model_comparison import plan_comparison

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))


def test_the_package_finds_the_configs():
    assert (conf_dir() / "config.yaml").is_file()
    assert {p.stem for p in (conf_dir() / "experiment").glob("*.yaml")} == set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = compose([f"+experiment={experiment}"])
    assert cfg.analyzers, f"{experiment} selects no analyzer"
    assert cfg.experiment_name == experiment
    container = OmegaConf.to_container(cfg, resolve=True)
    training = plan_emergence(dict(container), "outputs/unused")
    if training is not None:  # a training experiment: its monitor's analyzers and probe texts
        training.validate()
        return
    comparison = plan_comparison(container, "outputs/unused")
    pipelines = comparison.pipelines if comparison else [InterpretabilityPipeline.from_config(cfg)]
    for pipeline in pipelines:
        plan = pipeline.validate()  # no weights are loaded
        assert plan.inputs.count > 0
        planned = [a.name for a in plan.analyzers]  # causal-LM analyzers are planned as skipped on encoders
        skipped = [name for name in cfg.analyzers if name not in planned]
        assert planned and all(name in cfg.analyzers for name in planned)
        assert not skipped or not plan.model_info.is_causal


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_validates_with_the_quickstart(model):
    cfg = compose(["+experiment=quickstart", f"model={model}"])
    plan = InterpretabilityPipeline.from_config(cfg).validate()
    assert plan.model_info.name == model


def test_overrides_reach_the_analyzer_config():
    cfg = compose(
        ["+experiment=quickstart", "model=tiny_gpt2", "analyzers.activation_stats.layers=[1]", "batch_size=3"]
    )
    pipeline = InterpretabilityPipeline.from_config(cfg)
    plan = pipeline.validate()
    assert plan.analyzers[0].config.layers == [1]
    assert pipeline.batch_size == 3


def test_analyzer_group_adds_an_analyzer_with_its_defaults():
    cfg = compose(["+analyzer=activation_stats", "model=tiny_llama"])
    assert list(cfg.analyzers) == ["activation_stats"]
    assert list(cfg.analyzers.activation_stats.hook_points) == ["resid_post", "mlp.post"]


def test_inline_and_file_data_from_the_command_line(tmp_path):
    cfg = compose(["+experiment=quickstart", "model=tiny_llama", "data.texts=[hello there,general text]"])
    assert InterpretabilityPipeline.from_config(cfg).validate().inputs.texts == ["hello there", "general text"]
    path = tmp_path / "texts.txt"
    path.write_text("first line\n\nsecond line\n")
    cfg = compose(
        ["+experiment=quickstart", "model=tiny_llama", "data=english", "data.dataset=null", f"data.path={path}"]
    )
    assert InterpretabilityPipeline.from_config(cfg).validate().inputs.texts == ["first line", "second line"]


def test_plugin_config_dirs_with_awkward_paths_join_the_search_path(tmp_path):
    from interpsuite.hookspecs import hookimpl
    from interpsuite.plugins import get_registry

    conf = tmp_path / "odd dir,with 'quote'" / "conf"
    (conf / "analyzer").mkdir(parents=True)
    (conf / "analyzer" / "odd_stats.yaml").write_text("# @package analyzers.activation_stats\nlayers: [0]\n")

    class OddPlugin:
        @hookimpl
        def interpsuite_config_dirs(self):
            return [str(conf)]

    registry = get_registry(extra_plugins=[OddPlugin()])
    cfg = compose(["+analyzer=odd_stats", "model=tiny_llama"], registry=registry)
    assert list(cfg.analyzers.activation_stats.layers) == [0]
