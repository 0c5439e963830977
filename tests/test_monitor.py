"""Training-time monitors inside real training loops: the HF Trainer and Lightning.

The contract: analyzers run at the scheduled steps with the YAML's names and options, every
step leaves a complete run directory, and training is not perturbed: parameters, modes and
requires_grad flags after training are bit-identical with and without the monitor (dropout on,
so a monitor that consumed the RNG would change them).
"""

from __future__ import annotations

import json

import pytest
import torch

from interpsuite.errors import ConfigError
from interpsuite.models.sources import byte_tokenizer
from interpsuite.monitor import MONITOR_FILE, STEPS_FILE, MonitorSchedule, TrainingMonitor, preserved_training_state
from interpsuite.results import contract_errors, read_results

ANALYZERS = {"attention_entropy": {}, "activation_stats": {"layers": [0, 1]}, "gradient_flow": {}}
PROBE = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."]


def _tiny_causal_lm(seed: int = 0, dropout: float = 0.1):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=258,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        attention_dropout=dropout,
        bos_token_id=256,
        eos_token_id=256,
        pad_token_id=257,
    )
    return LlamaForCausalLM(config)


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, length: int = 16):
        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 256, (n, length), generator=generator)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _train_hf(tmp_path, callbacks, steps: int = 12, seed: int = 0):
    from transformers import Trainer, TrainingArguments

    model = _tiny_causal_lm(seed)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        logging_steps=4,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=seed,
        data_seed=seed,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=RandomTokens(), processing_class=byte_tokenizer(), callbacks=callbacks
    )
    trainer.train()
    return model


def _state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
    )


def test_hf_callback_runs_in_trainer_and_does_not_perturb_training(tmp_path):
    from interpsuite.callbacks import InterpsuiteCallback

    callback = InterpsuiteCallback(ANALYZERS, PROBE, every_n_steps=5, output_dir=tmp_path / "monitor")
    monitored = _train_hf(tmp_path / "a", [callback])
    plain = _train_hf(tmp_path / "b", [])

    params_a, modes_a, flags_a = _state(monitored)
    params_b, modes_b, flags_b = _state(plain)
    assert params_a.keys() == params_b.keys()
    assert all(torch.equal(params_a[k], params_b[k]) for k in params_a), "the monitor changed training"
    assert modes_a == modes_b and flags_a == flags_b
    assert all(modes_a)  # still in train mode, every module

    summary = json.loads((tmp_path / "monitor" / MONITOR_FILE).read_text())
    assert summary["status"] == "complete"
    assert summary["steps"] == [0, 5, 10, 12]  # at start, every 5, at the end
    assert 0 < summary["monitor_fraction"] < 1
    records = [json.loads(line) for line in (tmp_path / "monitor" / STEPS_FILE).read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 5, 10, 12]
    assert "loss" in records[2]["train"]  # the trainer's last logged loss rides along
    for record in records:
        run_dir = tmp_path / "monitor" / record["run_dir"]
        payload = read_results(run_dir)
        assert contract_errors(payload, run_dir) == []
        assert {e["status"] for e in payload["analyzers"].values()} == {"ok"}
        assert record["metrics"] and all(k.split(".")[0] in ANALYZERS for k in record["metrics"])
    # the analyses saw different weights: an attention metric moved between the first and last step
    first, last = records[0]["metrics"], records[-1]["metrics"]
    assert any(first[k] != last[k] for k in first if k.startswith("attention_entropy"))


def test_monitor_step_equals_a_separate_run_on_the_same_weights(tmp_path):
    """What the monitor records is what a plain pipeline run on the same weights gives."""
    from interpsuite import InterpretabilityPipeline
    from interpsuite.models import wrap

    model = _tiny_causal_lm(dropout=0.0).train()
    monitor = TrainingMonitor(ANALYZERS, PROBE, schedule=MonitorSchedule(every_n_steps=1), output_dir=tmp_path / "m")
    monitor.start(model, byte_tokenizer())
    record = monitor.run(3)
    monitor.finish()
    with wrap(model.eval(), byte_tokenizer()) as hooked:
        report = InterpretabilityPipeline(
            model=hooked, data=PROBE, analyzers=ANALYZERS, output_dir=tmp_path / "plain", sinks=["rundir"]
        ).run()
    plain = {f"{n}.{k}": v for n, e in report.payload["analyzers"].items() for k, v in e["metrics"].items()}
    assert record.metrics == plain


def test_preserved_state_restores_modes_grads_flags_and_rng():
    model = _tiny_causal_lm().train()
    model.model.layers[0].eval()  # a module the user froze in eval mode stays so
    frozen = model.model.embed_tokens.weight
    frozen.requires_grad_(False)
    grad = torch.ones_like(model.lm_head.weight)
    model.lm_head.weight.grad = grad
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    with preserved_training_state(model):
        assert not model.training and model.lm_head.weight.grad is None
        torch.manual_seed(123)
        torch.rand(5)
        frozen.requires_grad_(True)
        model.lm_head.weight.grad = torch.zeros_like(grad)
    assert [m.training for m in model.modules()] == modes
    assert model.lm_head.weight.grad is grad and not frozen.requires_grad
    assert torch.equal(torch.get_rng_state(), rng)


def test_lightning_callback_runs_in_fit(tmp_path):
    lightning = pytest.importorskip("lightning")
    from interpsuite.callbacks.lightning import InterpsuiteMonitor

    class Module(lightning.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _tiny_causal_lm()
            self.tokenizer = byte_tokenizer()

        def training_step(self, batch, batch_idx):
            loss = self.model(**batch).loss
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    monitor = InterpsuiteMonitor({"attention_entropy": {}}, PROBE, every_n_steps=3, output_dir=tmp_path / "monitor")
    trainer = lightning.Trainer(
        max_steps=7,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[monitor],
    )
    module = Module()
    trainer.fit(module, torch.utils.data.DataLoader(RandomTokens(), batch_size=8))
    summary = json.loads((tmp_path / "monitor" / MONITOR_FILE).read_text())
    assert summary["steps"] == [0, 3, 6, 7] and summary["status"] == "complete"
    assert module.model.training
    records = [json.loads(line) for line in (tmp_path / "monitor" / STEPS_FILE).read_text().splitlines()]
    assert "train_loss" in records[-1]["train"]
    assert monitor.summary is not None and monitor.summary["monitor_time_s"] > 0


# --- bad input: one clear line, before training starts -------------------------------------------
@pytest.mark.parametrize("interval", [0, -5, 2.5, True])
def test_bad_interval_is_refused(interval):
    with pytest.raises(ConfigError, match="every_n_steps"):
        MonitorSchedule(every_n_steps=interval)


def test_unknown_analyzer_and_bad_option_are_refused_at_construction():
    from interpsuite.callbacks import InterpsuiteCallback

    with pytest.raises(ConfigError, match="activation_statz"):
        InterpsuiteCallback({"activation_statz": {}})
    with pytest.raises(ConfigError, match="analyzers.activation_stats"):
        InterpsuiteCallback({"activation_stats": {"no_such_option": 1}})


def test_causal_analyzer_on_a_training_encoder_is_refused_before_training(tmp_path):
    from interpsuite.models import load_model

    encoder = load_model("tiny_bert")
    monitor = TrainingMonitor({"logit_lens": {}}, PROBE, output_dir=tmp_path / "m")
    with pytest.raises(ConfigError, match="logit_lens needs a causal LM.*encoder"):
        monitor.start(encoder.hf_model, encoder.tokenizer)
    assert not (tmp_path / "m").exists()


def test_metrics_and_figures_go_into_the_trainers_wandb_run_on_its_step_axis(tmp_path):
    """With a W&B run active (report_to="wandb"), the monitor logs into that same run, with the
    Trainer's `train/global_step` beside its metrics, and draws figures to log them."""
    import wandb

    from interpsuite.callbacks import InterpsuiteCallback

    run = wandb.init(mode="offline", dir=str(tmp_path), project="interpsuite-test", reinit="finish_previous")
    logged: list[dict] = []
    original = wandb.log
    wandb.log = lambda payload, *args, **kwargs: (logged.append(dict(payload)), original(payload, *args, **kwargs))
    try:
        callback = InterpsuiteCallback({"attention_entropy": {}}, PROBE, every_n_steps=4, output_dir=tmp_path / "m")
        _train_hf(tmp_path / "t", [callback], steps=8)
        summary = dict(run.summary)
    finally:
        wandb.log = original
        run.finish()
    ours = [p for p in logged if any(k.startswith("interpsuite/") for k in p)]
    assert [p["train/global_step"] for p in ours] == [0, 4, 8]
    assert any(isinstance(v, wandb.Image) for v in ours[0].values())  # figures drawn for W&B
    assert any(k.startswith("interpsuite/attention_entropy.") for k in summary)
    step_dir = tmp_path / "m" / "step_000004"
    assert any(step_dir.glob("figures/attention_entropy/*.png"))
