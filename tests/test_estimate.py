"""Resource estimates (interpsuite.estimate): the analyzer protocol, exact pass counts, the
estimate in results.json, the budget and --yes, and `interpsuite estimate` on a tiny model.

Pass and token counts are compared with what the model really computed: a forward pre-hook on
every block's MLP (which runs only when its block computes) records rows x positions, so a
sweep pass that starts at layer L contributes n_layers - L calls."""

from __future__ import annotations

import json
import re

import pytest
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.errors import ConfigError
from interpsuite.estimate import Cost, Workload
from interpsuite.estimate_command import estimate_cli
from interpsuite.models import describe_model, load_model
from interpsuite.pipeline import InterpretabilityPipeline
from interpsuite.results import Result
from interpsuite.testing import cached_model

TEXTS = [
    "When Mary and John went to the store, John gave a drink to",
    "The cat sat on the mat.",
    "Water boils at one hundred degrees.",
    "A dog ran far away from home today.",
    "Birds sing.",
]


class CountingAnalyzer(Analyzer):
    """No estimate of its own: the protocol's default applies."""

    name = "counting_test_analyzer"

    def run(self, ctx: RunContext) -> Result:
        for batch in ctx.batches():
            ctx.model.forward(batch)
        return Result()


class Counter:
    """Forward calls of the whole model, and rows x positions through every block that computes."""

    def __init__(self, model):
        self.calls = 0
        self.token_layers = 0
        blocks = [m for n, m in model.hf_model.named_modules() if re.fullmatch(r".*layers\.\d+\.mlp", n)]
        assert len(blocks) == model.info.n_layers
        self.handles = [model.hf_model.register_forward_pre_hook(self._call)]
        self.handles += [block.register_forward_pre_hook(self._block) for block in blocks]

    def _call(self, module, args):
        self.calls += 1

    def _block(self, module, args):
        hidden = args[0]
        self.token_layers += int(hidden.shape[0]) * int(hidden.shape[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def workload_of(model, texts=TEXTS, batch_size=2, max_length=64) -> Workload:
    from interpsuite.estimate import RunSettingsView, workload_for

    settings = RunSettingsView(batch_size=batch_size, max_length=max_length)
    return workload_for(model, texts, settings)


# --- the protocol -------------------------------------------------------------------------------
def test_default_estimate_is_one_forward_pass_over_the_inputs():
    info = describe_model("tiny_llama")
    workload = Workload(info=info, lengths=[3, 5, 2], batch_size=2, max_length=None)
    cost = CountingAnalyzer().estimate(info, None, workload)
    assert isinstance(cost, Cost)
    assert cost.forward_passes == 2  # [3, 5] padded to 5, then [2]
    assert cost.forward_tokens == 2 * 5 + 1 * 2
    assert cost.backward_passes == 0 and cost.backward_tokens == 0
    assert cost == workload.forward_inputs()


def test_default_estimate_matches_what_run_computes():
    model = cached_model("tiny_llama")
    workload = workload_of(model)
    analyzer = CountingAnalyzer()
    cost = analyzer.estimate(model.info, None, workload)
    ctx = RunContext(model=model, inputs=_inputs(TEXTS), batch_size=2, max_length=64, show_progress=False)
    with Counter(model) as counter:
        analyzer.run(ctx)
    assert counter.calls == cost.forward_passes == 3
    assert counter.token_layers == round(cost.forward_tokens * model.info.n_layers)


def _inputs(texts):
    from interpsuite.data import Inputs

    return Inputs(list(texts), "test")


# --- exact pass counts of analyzers ---------------------------------------------------------------
@pytest.mark.parametrize(
    "options",
    [
        {"strategies": ["zero"], "max_texts": 4},
        {"strategies": ["zero", "mean", "resample"], "max_texts": 5, "sweep_batch_size": 16},
        {"metric": "logit_diff", "pairs": "ioi", "n_pairs": 6, "strategies": ["zero", "mean"]},
    ],
)
def test_head_ablation_estimate_counts_every_pass_and_token(options):
    """One sweep item per (strategy, layer, head) plus the clean item, grouped by the sweep
    engine's planner: the estimate's passes and token-layers equal the model's, exactly."""
    from interpsuite.analyzer import build_config, resolve_config
    from interpsuite.plugins import get_registry

    model = cached_model("tiny_llama")
    cls = get_registry().analyzer("head_ablation")
    analyzer = cls(build_config(cls, options))
    config = resolve_config(analyzer, model.info)
    cost = analyzer.estimate(model.info, config, workload_of(model))
    items = len(config.strategies) * model.info.n_layers * model.info.n_heads
    assert items == len(config.strategies) * 8
    ctx = RunContext(model=model, inputs=_inputs(TEXTS), batch_size=2, max_length=64, show_progress=False)
    with Counter(model) as counter:
        result = analyzer.run(ctx)
    assert result.checks["sweep_clean_matches_forward"].passed
    assert counter.calls == cost.forward_passes
    assert counter.token_layers == round(cost.forward_tokens * model.info.n_layers)
    assert cost.backward_passes == 0


@pytest.mark.parametrize("batch_size", [4, 8, 12, 64])
@pytest.mark.parametrize("logits_to_keep", [0, 1, 3])
def test_sweep_estimate_equals_the_sweep_engine(batch_size, logits_to_keep):
    """Workload.sweep_batch plans a sweep as the engine does: the same passes, the same tokens."""
    from interpsuite.hooks import Intervention

    model = cached_model("tiny_llama")
    info = model.info
    batch = model.tokenize(TEXTS[:2], 64)
    items = [[]] + [
        [Intervention(f"blocks.{layer}.attn.z", "zero", heads=[h], positions=[p])]
        for layer in range(info.n_layers)
        for h in range(info.n_heads)
        for p in (0, 5)
    ]
    starts = [(info.n_layers, int(batch.input_ids.shape[1]))]
    starts += [(layer, p) for layer in range(info.n_layers) for _ in range(info.n_heads) for p in (0, 5)]
    cost = workload_of(model).sweep_batch(batch, starts, batch_size, logits_to_keep)

    def metric(output, rows):
        return output[:, -1, 0]

    with Counter(model) as counter, torch.no_grad():
        model.sweep(batch, items, metric, batch_size=batch_size, logits_to_keep=logits_to_keep)
    assert counter.calls == cost.forward_passes
    assert counter.token_layers == round(cost.forward_tokens * info.n_layers)


def test_gradient_analyzer_counts_backward_passes():
    from interpsuite.analyzer import build_config, resolve_config
    from interpsuite.plugins import get_registry

    model = cached_model("tiny_llama")
    cls = get_registry().analyzer("gradient_flow")
    analyzer = cls(build_config(cls, {}))
    config = resolve_config(analyzer, model.info)
    cost = analyzer.estimate(model.info, config, workload_of(model))
    assert cost.backward_passes == 3 and cost.forward_passes == 0  # 5 texts in batches of 2
    assert cost.figures == 1


# --- the estimate of a run -------------------------------------------------------------------------
def _pipeline(tmp_path, **options) -> InterpretabilityPipeline:
    return InterpretabilityPipeline(
        model="tiny_llama",
        data=TEXTS,
        analyzers={"activation_stats": {}, "attention_entropy": {}},
        output_dir=tmp_path / "run",
        sinks=["rundir"],
        batch_size=2,
        progress=False,
        **options,
    )


def test_estimate_is_recorded_in_results_json(tmp_path):
    report = _pipeline(tmp_path).run()
    payload = json.loads((report.run_dir / "results.json").read_text())
    estimate = payload["estimate"]
    assert [a["name"] for a in estimate["analyzers"]] == ["activation_stats", "attention_entropy"]
    assert [a["forward_passes"] for a in estimate["analyzers"]] == [3, 3]
    assert estimate["model"] == "tiny_llama" and estimate["inputs"]["texts"] == len(TEXTS)
    assert estimate["time_s"] > 0 and estimate["memory_bytes"] >= estimate["baseline_memory_bytes"] > 0
    assert estimate["calibration"]["model"]["forward_s_per_mac"] > 0
    assert estimate["over_budget"] == []


def test_a_run_over_budget_stops_with_a_config_error_unless_yes(tmp_path):
    with pytest.raises(ConfigError) as err:
        _pipeline(tmp_path, budget={"time_s": 0}).run()
    message = str(err.value)
    assert "\n" not in message
    assert "budget.time_s=0" in message and "pass --yes or raise budget.time_s" in message
    assert not (tmp_path / "run" / "results.json").exists()  # stopped before any analyzer ran
    report = _pipeline(tmp_path, budget={"time_s": 0}, yes=True).run()
    assert report.exit_code == 0
    assert json.loads((report.run_dir / "results.json").read_text())["estimate"]["over_budget"]


def test_budget_memory_and_disk_and_yes_in_the_config(tmp_path):
    with pytest.raises(ConfigError, match=r"budget\.memory_gb=1e-06; pass --yes or raise budget\.memory_gb"):
        _pipeline(tmp_path, budget={"memory_gb": 1e-6}).run()
    report = _pipeline(tmp_path, budget={"memory_gb": 1e-6, "assume_yes": True}).run()
    assert report.exit_code == 0


def test_bad_budget_is_refused_before_weights_load(tmp_path):
    with pytest.raises(ConfigError, match=r"^budget\.time_s: expected a number"):
        _pipeline(tmp_path, budget={"time_s": "soon"}).validate()
    with pytest.raises(ConfigError, match=r"budget: unknown key 'hours'"):
        _pipeline(tmp_path, budget={"hours": 1}).validate()


def test_cli_budget_refusal_exit_2_and_yes(tmp_path, capsys):
    from interpsuite.__main__ import run_cli

    common = ["model=tiny_llama", "+analyzers.activation_stats={}", "sinks=[rundir]", "progress=false"]
    code = run_cli([*common, "budget.time_s=0", f"hydra.run.dir={tmp_path / 'a'}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("interpsuite: error:")]
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("interpsuite: error: estimate over budget: time ~")
    code = run_cli([*common, "budget.time_s=0", "--yes", f"hydra.run.dir={tmp_path / 'b'}"])
    assert code == 0
    assert json.loads((tmp_path / "b" / "results.json").read_text())["estimate"]["budget"]["assume_yes"] is True


# --- `interpsuite estimate` --------------------------------------------------------------------------
def test_estimate_command_prints_a_table_per_analyzer(tmp_path, capsys):
    out_json = tmp_path / "estimate.json"
    code = estimate_cli(
        [
            "+experiment=quickstart",
            "model=tiny_llama",
            f"hydra.run.dir={tmp_path / 'run'}",
            "--json",
            str(out_json),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    for name in ("activation_stats", "head_classification", "token_attribution", "linear_probe", "total"):
        assert re.search(rf"^{name}\s", out, flags=re.M), out
    payload = json.loads(out_json.read_text())
    assert {a["name"] for a in payload["analyzers"]} >= {"logit_lens", "attention_view"}
    attribution = next(a for a in payload["analyzers"] if a["name"] == "token_attribution")
    # per text: saliency, grad x input, and the gradient direction of saliency's finite-difference check
    assert attribution["backward_passes"] == 2 * 3
    assert not (tmp_path / "run").exists()  # nothing written: the estimate only


def test_estimate_command_bad_input_is_one_line(capsys):
    assert estimate_cli(["+experiment=no_such_experiment", "model=tiny_llama"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("interpsuite: error:") and "no_such_experiment" in line
    assert estimate_cli(["model=tiny_llama", "+analyzers.activation_stats={}", "--frobnicate"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown option '--frobnicate'" in line


def test_estimate_subcommand_is_dispatched_by_the_console_script(tmp_path, capsys):
    from interpsuite.cli import main

    code = main(["estimate", "model=tiny_llama", "+analyzers.activation_stats={}", f"hydra.run.dir={tmp_path}"])
    assert code == 0
    assert "activation_stats" in capsys.readouterr().out


def test_the_probe_leaves_random_state_and_gradients_alone():
    from interpsuite.estimate_probe import probe_model

    model = load_model("tiny_llama")
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    timing = probe_model(model, workload_of(model))
    assert torch.equal(torch.rand(3), expected)
    assert all(p.grad is None for p in model.hf_model.parameters())
    assert timing.forward_s_per_mac > 0 and timing.backward_probed
