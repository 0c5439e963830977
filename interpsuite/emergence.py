"""Known answer for the training monitor: induction heads form abruptly (Olsson et al. 2022).

`+experiment=induction_emergence` trains a 2-layer attention-only transformer from scratch on
sequences of a random token segment repeated twice ([BOS, s, s]), with the Hugging Face
Trainer and `InterpsuiteCallback` attached. Only an induction circuit (a previous-token head
feeding an induction head) can predict the second copy, so the monitor's induction score and
its loss on the second copy are the two curves of the phase change.

The model is a standard `LlamaForCausalLM` with `intermediate_size=0`: its MLPs have zero
width, so they add exactly zero and the model is attention-only, yet it saves, reloads and is
hooked like any Hugging Face Llama (`model.name=<run>/model` analyses it later).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .figures import FigureStyle, figure_function
from .results import Result
from .settings import coerce_dataclass, constrained

#: the monitor's series this experiment reads (head_classification metrics)
SCORE_METRIC = "head_classification.max.induction"
LOSS_METRIC = "head_classification.probe.loss_second_copy"
FIRST_LOSS_METRIC = "head_classification.probe.loss_first_copy"


@dataclass
class EmergenceTraining:
    """The `train:` group of +experiment=induction_emergence."""

    n_layers: int = constrained(2, min=1)
    d_model: int = constrained(64, min=8)
    n_heads: int = constrained(4, min=1)
    segment: int = constrained(24, min=4)  # random tokens per copy; sequences are 1 + 2 * segment long
    vocab: int = constrained(256, min=8)  # segment tokens are drawn from the first `vocab` byte tokens
    steps: int = constrained(1000, min=1)
    batch_size: int = constrained(32, min=1)
    learning_rate: float = constrained(1e-3, min=0)
    warmup_steps: int = constrained(50, min=0)
    weight_decay: float = constrained(0.01, min=0)
    monitor_every: int = constrained(25, min=1)
    seed: int = 0
    threads: int | None = constrained(None, min=1)  # torch threads (None: torch's default)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"train.d_model={self.d_model} must be divisible by train.n_heads={self.n_heads}")
        if self.vocab > 256:
            raise ConfigError(f"train.vocab={self.vocab}: the byte tokenizer has 256 content tokens; use <= 256")
        if self.segment > self.vocab:
            raise ConfigError(
                f"train.segment={self.segment} is longer than train.vocab={self.vocab}; a segment has distinct tokens"
            )


class RepeatedSegments(torch.utils.data.Dataset):
    """Item i: [BOS, s, s] with s drawn (seeded by i) without replacement from `vocab` tokens."""

    def __init__(self, n: int, segment: int, vocab: int, bos: int, seed: int):
        self.n, self.segment, self.vocab, self.bos, self.seed = n, segment, vocab, bos, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        segment = torch.randperm(self.vocab, generator=generator)[: self.segment]
        ids = torch.cat([torch.tensor([self.bos]), segment, segment])
        return {"input_ids": ids, "labels": ids}


def attention_only_model(cfg: EmergenceTraining, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.d_model,
        intermediate_size=0,  # attention-only: zero-width MLPs add exactly zero
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        max_position_embeddings=max(256, 4 * cfg.segment + 8),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def jump_step(steps: list[int], values: list[float]) -> tuple[int, float]:
    """The step that ends the largest rise between consecutive monitored steps, and the rise."""
    if len(values) < 2:
        return steps[0], 0.0
    rises = np.diff(np.asarray(values, dtype=float))
    best = int(np.argmax(rises))
    return steps[best + 1], float(rises[best])


@figure_function
def plot_emergence(
    steps: list[int],
    induction: list[float],
    loss_second: list[float],
    loss_first: list[float],
    train_steps: list[int],
    train_loss: list[float],
    jump: int,
    title: str,
    style: FigureStyle,
):
    """Induction score and in-context loss against the step, the jump marked."""
    fig, axes = style.figure(1, 2, scale=(1.4, 1.0))
    left, right = axes[0, 0], axes[0, 1]
    left.plot(steps, induction, marker="o", markersize=3, color="C0", label="best head's induction score")
    left.axvline(jump, color="0.5", linestyle="--", linewidth=1, label=f"largest jump (step {jump})")
    left.set_xlabel("training step")
    left.set_ylabel("induction score")
    left.set_ylim(0, 1)
    left.grid(alpha=0.3)
    right.plot(steps, loss_second, marker="o", markersize=3, color="C1", label="loss on the repeated copy")
    right.plot(steps, loss_first, marker="o", markersize=3, color="C2", label="loss on the first copy")
    if train_steps:
        right.plot(train_steps, train_loss, color="C3", alpha=0.6, label="training loss (whole sequence)")
    right.axvline(jump, color="0.5", linestyle="--", linewidth=1)
    right.set_xlabel("training step")
    right.set_ylabel("cross-entropy (nats)")
    right.grid(alpha=0.3)
    # one legend below both panels: inside either it covers the curves at a paper column's width
    handles = [*left.get_legend_handles_labels()[0], *right.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    fig.suptitle(title)
    return fig


def build_trainer(cfg: EmergenceTraining, out: Path, callbacks: list, progress: bool = True):
    """The Hugging Face Trainer of the experiment over a fresh model: (trainer, model, tokenizer)."""
    from transformers import Trainer, TrainingArguments

    from .models.sources import byte_tokenizer

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    tokenizer = byte_tokenizer()
    model = attention_only_model(cfg, tokenizer)
    dataset = RepeatedSegments(cfg.steps * cfg.batch_size, cfg.segment, cfg.vocab, model.config.bos_token_id, cfg.seed)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=cfg.steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="cosine",
        logging_steps=cfg.monitor_every,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=not progress,
        seed=cfg.seed,
        data_seed=cfg.seed,
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, callbacks=callbacks)
    return trainer, model, tokenizer


def train_with_monitor(cfg: EmergenceTraining, analyzers: dict, data: Any, out: Path, progress: bool = True) -> dict:
    """Train the model with the HF Trainer and the monitor attached; the monitor's summary."""
    from .callbacks import InterpsuiteCallback

    callback = InterpsuiteCallback(analyzers, data, every_n_steps=cfg.monitor_every, output_dir=out / "monitor")
    trainer, model, tokenizer = build_trainer(cfg, out / "trainer", [callback], progress)
    trainer.train()
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    train_log = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    return {"summary": callback.summary, "train_log": train_log}


def summarise(monitor_dir: Path, train_log: list[tuple[int, float]], monitor: dict, cfg: EmergenceTraining) -> Result:
    """The phase change from the monitor's records: scores, jump step, losses, the monitor's cost."""
    records = [json.loads(line) for line in (monitor_dir / "steps.jsonl").read_text().splitlines() if line]
    records = [r for r in records if SCORE_METRIC in r["metrics"]]
    if not records:
        raise ConfigError(f"{monitor_dir}: the monitor recorded no {SCORE_METRIC}; keep head_classification in it")
    steps = [r["step"] for r in records]
    score = [r["metrics"][SCORE_METRIC] for r in records]
    loss_second = [r["metrics"].get(LOSS_METRIC, float("nan")) for r in records]
    loss_first = [r["metrics"].get(FIRST_LOSS_METRIC, float("nan")) for r in records]
    jump, rise = jump_step(steps, score)
    at = steps.index(jump)
    result = Result()
    result.metrics.update(
        {
            "initial_induction_score": score[0],
            "final_induction_score": score[-1],
            "jump_step": float(jump),
            "jump_rise": rise,
            "loss_second_copy_before_jump": loss_second[at - 1],
            "loss_second_copy_at_jump": loss_second[at],
            "loss_second_copy_final": loss_second[-1],
            "loss_first_copy_final": loss_first[-1],
            "monitor_fraction": monitor["monitor_fraction"],
            "monitor_time_s": monitor["monitor_time_s"],
            "wall_time_s": monitor["wall_time_s"],
        }
    )
    result.add_check("initial_induction_below_0.1", score[0], 0.1, "max")
    result.add_check("final_induction_above_0.5", score[-1], 0.5, "min")
    # the in-context loss falls where the score jumps: the step's drop is most of the whole drop
    total_drop = loss_second[0] - loss_second[-1]
    drop_at_jump = loss_second[at - 1] - loss_second[at]
    result.metrics["loss_drop_at_jump_fraction"] = drop_at_jump / total_drop if total_drop > 0 else float("nan")
    result.add_check("loss_falls_at_the_jump", drop_at_jump, 0.0, "min")
    import pandas as pd

    result.tables["curve"] = pd.DataFrame(
        {"step": steps, "induction_score": score, "loss_second_copy": loss_second, "loss_first_copy": loss_first}
    )
    result.summary = {
        "model": f"{cfg.n_layers}-layer attention-only, d_model {cfg.d_model}, {cfg.n_heads} heads",
        "task": f"[BOS, s, s] with s = {cfg.segment} random tokens of {cfg.vocab}",
        "steps": cfg.steps,
        "jump_step": jump,
        "monitor_share_of_training_time": round(monitor["monitor_fraction"], 4),
        "curve": [
            {"step": s, "induction": round(v, 4), "loss_second_copy": round(loss, 4)}
            for s, v, loss in zip(steps, score, loss_second, strict=True)
        ],
    }
    train_steps = [int(s) for s, _ in train_log]
    train_loss = [float(v) for _, v in train_log]
    title = f"Induction heads form at step {jump}"
    result.add_figure(
        "phase_change",
        plot_emergence,
        steps,
        score,
        loss_second,
        loss_first,
        train_steps,
        train_loss,
        jump,
        title,
        FigureStyle(),
    )
    return result


def run_emergence(cfg: EmergenceTraining, analyzers: dict, data: Any, out: Path, progress: bool = True) -> Result:
    started = time.perf_counter()
    trained = train_with_monitor(cfg, analyzers, data, out, progress)
    result = summarise(out / "monitor", trained["train_log"], trained["summary"], cfg)
    result.duration_s = time.perf_counter() - started
    return result


def emergence_config(train: Any) -> EmergenceTraining:
    return coerce_dataclass(EmergenceTraining, train or {}, "train")


TRAIN_KEY = "train"
EXPERIMENT_NAME = "induction_emergence"


@dataclass
class EmergencePlan:
    """The validated experiment: training settings, the monitor's analyzers and probe texts."""

    output_dir: Path
    training: EmergenceTraining
    analyzers: dict
    data: Any
    settings: Any
    experiment: str = EXPERIMENT_NAME
    progress: bool = True

    def validate(self) -> None:
        """Analyzer names and options, the probe texts, the run directory: before training."""
        from .monitor import TrainingMonitor
        from .settings import check_writable_dir

        if "head_classification" not in self.analyzers:
            raise ConfigError(
                "induction_emergence: the monitor needs head_classification (its induction score is the "
                "experiment's curve); add +analyzers.head_classification={}"
            )
        TrainingMonitor(self.analyzers, self.data, output_dir=self.output_dir / "monitor")
        check_writable_dir(self.output_dir, "run directory", create=False)


def plan_emergence(container: dict[str, Any], output_dir: str | Path) -> EmergencePlan | None:
    """None unless the config has a `train:` block (the training experiments); else the plan."""
    from .settings import RunSettings

    block = container.pop(TRAIN_KEY, None)
    if block is None:
        return None
    run_keys = {k: container[k] for k in RunSettings.__dataclass_fields__ if k in container}
    settings = coerce_dataclass(RunSettings, run_keys)
    data = container.get("data")
    return EmergencePlan(
        Path(output_dir),
        emergence_config(block),
        dict(container.get("analyzers") or {}),
        data,
        settings,
        container.get("experiment_name") or EXPERIMENT_NAME,
        settings.progress,
    )


def run_planned(plan: EmergencePlan) -> dict:
    """Train with the monitor, then write `<run>/results.json` (entry `induction_emergence`) and
    the temporal summary of the monitor's records under `<run>/temporal/`."""
    from .pipeline import record_result
    from .temporal import run_temporal, temporal_plan

    started = time.perf_counter()
    result = run_emergence(plan.training, plan.analyzers, plan.data, plan.output_dir, plan.progress)
    monitor = json.loads((plan.output_dir / "monitor" / "monitor.json").read_text())
    payload = record_result(
        plan.output_dir,
        plan.experiment,
        EXPERIMENT_NAME,
        result,
        model={**monitor.get("model", {}), "name": "attention-only (trained here)", "path": "model"},
        inputs={"source": "repeated random segments", "count": plan.training.steps * plan.training.batch_size},
        config={"train": plan.training.__dict__, "analyzers": plan.analyzers},
        settings=plan.settings,
        started=started,
    )
    trend = temporal_plan(plan.output_dir / "monitor", output_dir=plan.output_dir / "temporal", sinks=["rundir"])
    trend.validate()
    run_temporal(trend)
    return payload


__all__ = [
    "EmergenceTraining",
    "RepeatedSegments",
    "attention_only_model",
    "emergence_config",
    "jump_step",
    "plot_emergence",
    "run_emergence",
    "summarise",
]
