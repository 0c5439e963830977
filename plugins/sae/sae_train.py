"""`sae_train`: train a sparse autoencoder on one hook point, evaluate it on held-out text, save it.

A thin analyzer over the engine (`workflow`, `training`, `evaluation`):

1. The corpus (`corpus`: the run's inputs, Python's documentation, or your .txt files) is split
   into training and held-out texts (seeded, whole texts).
2. The hook point is recorded over the training texts into an activation store (resumable
   safetensors shards) under `workdir` (default <run>/data/sae_train).
3. The SAE trains on `epochs` shuffled passes over the store (bounded memory), with the
   activations scaled to E||x|| = sqrt(d_in) and the scale folded into the weights afterwards.
   Checkpoints go to <workdir>/checkpoint: run again with the same `workdir` to resume.
4. It is saved as an interpsuite SAE (<run>/data/sae_train/sae) and, by default, in SAELens's
   format (<run>/data/sae_train/saelens); both are reloaded and compared (checks).
5. `evaluate_sae` on the held-out texts: MSE, explained variance, L0, dead and dense latents,
   CE loss recovered (causal LMs).

`synthetic_check` also trains the same architecture on a synthetic dictionary with a known
answer and checks that it is recovered: a trainer that does not learn still produces an SAE
and plausible curves on real activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from interpsuite.analyzer import Analyzer, RunContext
from interpsuite.artifacts import ModelFingerprint
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo
from interpsuite.results import Result

from .model import ARCHITECTURES, SAEConfig
from .training import B_DEC_INITS, TrainSettings
from .workflow import CORPORA

#: tokens per optimiser step at most, and the fewest steps a small budget is cut into
MAX_BATCH_TOKENS = 4096
MIN_STEPS = 200


@dataclass
class SAETrainConfig:
    hook: str | None = None  # e.g. blocks.15.resid_post; null = resid_post of the middle layer
    architecture: str = "topk"  # topk | relu | jumprelu
    width: int | None = None  # latents; null = expansion x d_in
    expansion: int = 8
    k: int = 32  # topk: active latents per token
    corpus: str = "inputs"  # inputs (the run's texts) | python_docs (offline, ~113k SmolLM2 tokens) | files
    paths: list[str] = field(default_factory=list)  # corpus=files: .txt files or folders of them
    max_chars: int = 2000  # corpus texts are cut into pieces of at most this many characters
    held_out: float = 0.1  # fraction of the texts kept out of training, for evaluation
    max_length: int | None = 512  # tokens per text when recording; null = the run's max_length
    epochs: int = 1  # passes over the recorded tokens
    train_tokens: int | None = None  # training budget; null = epochs x recorded tokens
    batch_size: int | None = None  # tokens per step; null = 4096, fewer when that gives < 200 steps
    lr: float = 4e-4
    lr_warmup_steps: int = 0
    lr_decay: float = 0.2  # linear decay to 0 over this final fraction of the steps
    l1_coefficient: float = 5.0  # relu
    l0_coefficient: float = 1.0  # jumprelu
    aux_coefficient: float = 0.03125  # topk: AuxK weight
    aux_k: int | None = None  # topk: latents AuxK uses; null = d_in / 2
    dead_tokens: int | None = None  # tokens without firing that make a latent dead; null = budget / 10 (<= 10M)
    init_b_dec: str = "geometric_median"  # geometric_median | mean | none
    normalize_activations: bool = True  # train at E||x|| = sqrt(d_in), fold the scale in afterwards
    buffer_tokens: int = 262144  # shuffle buffer (rows held in memory)
    workdir: str | None = None  # store + checkpoints; the same folder again resumes; null = run data dir
    checkpoint_every: int = 500  # steps (0: only at the end)
    evaluate: bool = True  # held-out metrics through evaluate_sae (CE loss recovered on causal LMs)
    dense_threshold: float = 0.1  # evaluation: a latent active on more tokens than this is dense
    synthetic_check: bool = False  # also check recovery of a known dictionary with this architecture
    export_saelens: bool = True  # also save in SAELens's format (cfg.json + sae_weights.safetensors)
    log_every: int = 10  # history rows (and W&B points) every N steps


def default_hook(info: ModelInfo) -> str:
    return f"blocks.{info.n_layers // 2}.resid_post"


def resolve_hook(info: ModelInfo, hook: str | None, what: str) -> str:
    """A full hook name with one vector per token (what an SAE reads), checked before weights load."""
    from interpsuite.analyzer import check_hook_points, check_layers
    from interpsuite.hooks import parse_hook_name

    from ..activation.store import BLOCK_SITES, MODEL_SITES

    if hook is None:
        return default_hook(info)
    layer, site = parse_hook_name(str(hook))
    if layer is not None and site in BLOCK_SITES:
        check_layers(info, [layer], f"{what}.hook ({hook})")
    elif not (layer is None and site in MODEL_SITES):
        raise ConfigError(
            f"{what}.hook: {hook!r} is not a hook point with one vector per token; give a full name such as "
            f"{default_hook(info)} (sites: {', '.join(BLOCK_SITES)}) or one of {', '.join(MODEL_SITES)}"
        )
    return check_hook_points(info, [hook], f"{what}.hook")[0]


def sae_config(info: ModelInfo, cfg: SAETrainConfig, hook: str) -> SAEConfig:
    from ..activation.store import hook_units

    if cfg.expansion < 1:
        raise ConfigError(f"sae_train.expansion must be >= 1 (width = expansion x d_in), got {cfg.expansion}")
    d_in = hook_units(info, hook)
    width = cfg.width if cfg.width is not None else cfg.expansion * d_in
    return SAEConfig(
        d_in=d_in, width=width, architecture=cfg.architecture, k=cfg.k, hook=hook, model_name=info.name
    )  # fmt: skip


def training_bytes(cfg: SAEConfig) -> int:
    """Memory of training an SAE: W_enc and W_dec, their gradients and Adam's two moments (8
    copies of width x d_in) plus the activations of one batch are small beside that."""
    return 8 * cfg.width * cfg.d_in * cfg.torch_dtype.itemsize


def machine_memory() -> int | None:
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound known
        return None


def check_fits_memory(cfg: SAEConfig, what: str = "sae_train") -> None:
    """Refuse a width whose training state cannot fit in this machine's memory, before allocating it."""
    needed, total = training_bytes(cfg), machine_memory()
    if total is not None and needed > total:
        raise ConfigError(
            f"{what}.width: {cfg.width:,} latents x {cfg.d_in} inputs need about {needed / 2**30:,.1f} GiB for "
            f"weights, gradients and Adam state; this machine has {total / 2**30:,.1f} GiB. Lower width (or expansion)"
        )


def train_settings(cfg: SAETrainConfig, budget: int, workdir: Path | None, progress: bool) -> TrainSettings:
    """TrainSettings for a run over `budget` tokens (batch size and dead window resolved)."""
    batch = cfg.batch_size or max(1, min(MAX_BATCH_TOKENS, budget // MIN_STEPS))
    if batch > budget:
        raise ConfigError(
            f"sae_train: batch_size {batch} is larger than the whole budget ({budget} tokens); "
            "lower batch_size or give more text"
        )
    dead = cfg.dead_tokens or max(batch, min(10_000_000, budget // 10))
    return TrainSettings(
        lr=cfg.lr, total_tokens=budget, batch_size=batch, lr_warmup_steps=cfg.lr_warmup_steps, lr_decay=cfg.lr_decay,
        l1_coefficient=cfg.l1_coefficient, l0_coefficient=cfg.l0_coefficient, aux_coefficient=cfg.aux_coefficient,
        aux_k=cfg.aux_k, dead_tokens_threshold=dead, init_b_dec=cfg.init_b_dec, log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every, checkpoint_dir=None if workdir is None else workdir / "checkpoint",
        progress=progress,
    )  # fmt: skip


def check_options(cfg: SAETrainConfig, what: str = "sae_train") -> None:
    """The options no model is needed for."""
    if cfg.corpus not in CORPORA:
        raise ConfigError(f"{what}.corpus: {cfg.corpus!r} is unknown; choose one of {', '.join(CORPORA)}")
    if cfg.corpus == "files":
        if not cfg.paths:
            raise ConfigError(f"{what}.paths: corpus=files needs paths=[...] (.txt files or folders)")
        missing = [p for p in cfg.paths if not Path(p).expanduser().exists()]
        if missing:
            raise ConfigError(f"{what}.paths: {missing[0]} does not exist; give .txt files or folders of them")
    if not 0.0 <= cfg.held_out < 1.0:
        raise ConfigError(f"{what}.held_out is a fraction of the texts in [0, 1), got {cfg.held_out}")
    for name in ("epochs", "max_chars", "log_every"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{what}.{name} must be >= 1, got {getattr(cfg, name)}")
    for name in ("train_tokens", "batch_size", "dead_tokens", "max_length"):
        value = getattr(cfg, name)
        if value is not None and value < 1:
            raise ConfigError(f"{what}.{name} must be >= 1 or null, got {value}")
    if cfg.architecture not in ARCHITECTURES:
        raise ConfigError(f"{what}.architecture {cfg.architecture!r} is unknown; choose one of {list(ARCHITECTURES)}")
    if cfg.init_b_dec not in B_DEC_INITS:
        raise ConfigError(f"{what}.init_b_dec {cfg.init_b_dec!r} is unknown; choose one of {list(B_DEC_INITS)}")
    if not 0.0 < cfg.dense_threshold <= 1.0:
        raise ConfigError(f"{what}.dense_threshold must be in (0, 1], got {cfg.dense_threshold}")
    if cfg.buffer_tokens < 2:
        raise ConfigError(f"{what}.buffer_tokens must be >= 2, got {cfg.buffer_tokens}")
    TrainSettings(  # every training option through the trainer's own checks, with a stand-in length
        lr=cfg.lr, steps=1, batch_size=cfg.batch_size or 1, lr_warmup_steps=cfg.lr_warmup_steps,
        lr_decay=cfg.lr_decay, l1_coefficient=cfg.l1_coefficient, l0_coefficient=cfg.l0_coefficient,
        aux_coefficient=cfg.aux_coefficient, aux_k=cfg.aux_k, checkpoint_every=cfg.checkpoint_every,
    )  # fmt: skip


class SAETrain(Analyzer):
    name = "sae_train"
    family = "sae"
    description = "train a sparse autoencoder (TopK/ReLU/JumpReLU) on a hook point; held-out EV, L0, CE recovered"
    Config = SAETrainConfig

    def validate(self, info: ModelInfo, cfg: SAETrainConfig) -> SAETrainConfig:
        check_options(cfg)
        cfg.hook = resolve_hook(info, cfg.hook, self.name)
        sae = sae_config(info, cfg, cfg.hook)  # width / k / d_in errors before any weights load
        check_fits_memory(sae)
        return cfg

    def estimate(self, info: ModelInfo, cfg: SAETrainConfig, workload):
        """Recording the hook over the corpus's training split, epochs x recorded tokens of training
        steps, the held-out evaluation, the synthetic check and the saved SAE (and store)."""
        from interpsuite.estimate_analyzers import SAEWork, sae_train_cost

        from .workflow import corpus_texts, split_held_out

        hook = resolve_hook(info, cfg.hook, self.name)
        sae = sae_config(info, cfg, hook)
        max_length = cfg.max_length or workload.max_length
        texts = corpus_texts(cfg.corpus, workload.texts, cfg.paths, cfg.max_chars)
        train, held = split_held_out(texts, cfg.held_out, workload.seed)
        work = SAEWork(
            hook=hook,
            d_in=sae.d_in,
            width=sae.width,
            train_lengths=workload.token_lengths(train, max_length),
            held_lengths=workload.token_lengths(held, max_length) if cfg.evaluate else [],
            epochs=cfg.epochs,
            train_tokens=cfg.train_tokens,
            training_bytes=training_bytes(sae),
            buffer_tokens=cfg.buffer_tokens,
            synthetic_steps=1000 if cfg.synthetic_check else 0,
            saelens=cfg.export_saelens,
        )
        return sae_train_cost(workload, work)

    def run(self, ctx: RunContext) -> Result:
        from .evaluation import evaluate_sae
        from .saelens import save_saelens
        from .training_plots import plot_training_curves
        from .workflow import corpus_texts, record_activations, split_held_out, train_on_store

        cfg: SAETrainConfig = self.cfg
        model, info = ctx.model, ctx.model.info
        hook = cfg.hook
        sae_cfg = sae_config(info, cfg, hook)
        data_dir = ctx.data_dir(self.name)
        workdir = Path(cfg.workdir).expanduser() if cfg.workdir else data_dir
        max_length = cfg.max_length or ctx.max_length

        texts = corpus_texts(cfg.corpus, ctx.inputs.texts, cfg.paths, cfg.max_chars)
        train_texts, held_texts = split_held_out(texts, cfg.held_out, ctx.seed)
        lengths = model.token_lengths(train_texts)
        available = sum(min(n, max_length) if max_length else n for n in lengths)
        budget = cfg.train_tokens or available * cfg.epochs
        if budget > available * cfg.epochs:
            raise ConfigError(
                f"sae_train.train_tokens: {budget:,} tokens is more than the corpus gives ({available:,} training "
                f"tokens x {cfg.epochs} epoch(s)); raise epochs, add text (corpus=files), or lower train_tokens"
            )
        settings = train_settings(cfg, budget, workdir, ctx.show_progress)

        store, recorded = record_activations(
            model, train_texts, hook, workdir / "store", batch_size=ctx.batch_size, max_length=max_length,
            progress=ctx.progress,
        )  # fmt: skip
        outcome = train_on_store(
            store, hook, sae_cfg, settings, epochs=cfg.epochs, normalize=cfg.normalize_activations,
            buffer_tokens=cfg.buffer_tokens, seed=ctx.seed, fingerprint=ModelFingerprint.of(model),
        )  # fmt: skip
        sae = outcome.sae
        sae_dir = sae.save(data_dir / "sae")
        result = Result()
        self._check_saved(result, sae, sae_dir, data_dir if cfg.export_saelens else None, save_saelens)

        history = pd.DataFrame({k: v for k, v in outcome.history.to_dict().items() if isinstance(v, list)})
        result.tables["history"] = history
        result.curves["history"] = "step"
        if len(history):
            title = f"SAE training: {info.name} {hook}, {sae_cfg.architecture} width {sae_cfg.width}"
            result.add_figure("training_curves", plot_training_curves, history, title, ctx.style)
        result.metrics.update(
            {
                "tokens_recorded": float(len(store)),
                "record_tokens_per_s": recorded.tokens_per_s,
                "tokens_trained": float(outcome.tokens),
                "train_tokens_per_s": outcome.tokens_per_s,
                "steps": float(outcome.history.steps_done),
                "activation_scale": outcome.scale,
                "final_batch_loss": history["loss"].iloc[-1] if len(history) else float("nan"),
                "final_batch_explained_variance": history["explained_variance"].iloc[-1] if len(history) else 0.0,
            }
        )
        if cfg.evaluate and held_texts:
            evaluation = evaluate_sae(
                model, sae, held_texts, hook, batch_size=ctx.batch_size, max_length=max_length,
                dense_threshold=cfg.dense_threshold, progress=ctx.progress,
            )  # fmt: skip
            result.metrics.update({k: v for k, v in evaluation.metrics().items() if v is not None})
            result.metrics["held_out_tokens"] = result.metrics.pop("n_tokens")
            for name, (value, threshold, mode) in evaluation.sanity().items():
                result.add_check(name, value, threshold, mode)
            result.tables["latent_density"] = pd.DataFrame(
                {"latent": range(len(evaluation.density)), "density": evaluation.density}
            )
            from .feature_plots import plot_feature_density

            result.add_figure("feature_density", plot_feature_density, evaluation.density, ctx.style)
        if cfg.synthetic_check:
            from .synthetic import synthetic_recovery

            recovery = synthetic_recovery(cfg.architecture, seed=ctx.seed)
            result.metrics["synthetic_recovery"] = recovery.recovery
            result.metrics["synthetic_explained_variance"] = recovery.explained_variance
            result.add_check("synthetic_dictionary_recovered", recovery.recovery, 0.9, "min")
        result.summary = {
            "sae": str(sae_dir.resolve()),
            "saelens": str((data_dir / "saelens").resolve()) if cfg.export_saelens else None,
            "hook": hook,
            "architecture": sae_cfg.architecture,
            "width": sae_cfg.width,
            "k": sae_cfg.k if sae_cfg.architecture == "topk" else None,
            "d_in": sae_cfg.d_in,
            "corpus": cfg.corpus,
            "texts_train": len(train_texts),
            "texts_held_out": len(held_texts),
            "batch_size": settings.batch_size,
            "dead_tokens": settings.dead_tokens_threshold,
            "store": recorded.path,
            "store_resumed": recorded.resumed,
            "load_with": f"interpsuite_plugins.sae.load_sae({str(sae_dir.resolve())!r})",
        }
        return result

    @staticmethod
    def _check_saved(result: Result, sae, sae_dir: Path, export_dir: Path | None, save_saelens) -> None:
        """Both saved formats read back to the same function (on a fixed random probe)."""
        from .files import load_sae

        generator = torch.Generator().manual_seed(0)
        probe = torch.randn(256, sae.cfg.d_in, generator=generator) * sae.b_dec.norm().clamp_min(1)
        with torch.no_grad():
            reference = sae(probe)
            reloaded = load_sae(sae_dir, d_in=sae.cfg.d_in)(probe)
            result.add_check("reload_max_abs_error", float((reloaded - reference).abs().max()), 0.0)
            if export_dir is not None:
                save_saelens(sae, export_dir / "saelens")
                exported = load_sae(export_dir / "saelens", d_in=sae.cfg.d_in)(probe)
                scale = float(reference.abs().max().clamp_min(1e-12))
                result.add_check("saelens_roundtrip_rel_error", float((exported - reference).abs().max()) / scale, 1e-5)


ANALYZERS = [SAETrain]
