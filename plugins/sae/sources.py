"""Which SAE an analyzer works on: a folder the user names, or the one `sae_train` made in this run.

Why one place: `sae_eval` and `sae_features` (and the server later) take the same `sae:` option
and must refuse the same mistakes before any weights load: a folder that is not an SAE, an SAE
for another width (d_in), or one trained on another hook point than the one asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from interpsuite.analyzer import RunContext
from interpsuite.errors import ConfigError
from interpsuite.models import ModelInfo

from .model import SAEConfig

#: where `sae_train` saves its SAE inside a run directory
RUN_SAE = Path("data") / "sae_train" / "sae"


@dataclass
class SAEChoice:
    """The SAE to use and where it came from (for the result's summary)."""

    sae: Any
    source: str
    hook: str


def check_sae_file(info: ModelInfo, path: str, hook: str | None, allow_other_hook: bool, what: str) -> str:
    """Refuse a wrong SAE folder from its JSON alone; return the hook point to use."""
    from ..activation.store import hook_units
    from .files import read_sae_config
    from .sae_train import resolve_hook

    cfg: SAEConfig = read_sae_config(path)
    chosen = hook or cfg.hook
    if not chosen:
        raise ConfigError(
            f"{what}.sae: {path} does not say which hook point it was trained on; give {what}.hook=blocks.L.site"
        )
    chosen = resolve_hook(info, chosen, what)
    if cfg.hook and chosen != cfg.hook and not allow_other_hook:
        raise ConfigError(
            f"{what}.hook: the SAE in {path} was trained on {cfg.hook}, not {chosen}; drop {what}.hook to use its own, "
            f"or set {what}.allow_other_hook=true to apply it elsewhere on purpose"
        )
    units = hook_units(info, chosen)
    if units != cfg.d_in:
        raise ConfigError(
            f"{what}.sae: {path} reads {cfg.d_in}-dimensional activations but {chosen} of {info.name} has {units}; "
            "use an SAE trained for this model and hook point"
        )
    return chosen


def run_sae(ctx: RunContext) -> Path | None:
    """The SAE `sae_train` saved earlier in this run, if there is one."""
    if ctx.run_dir is None:
        return None
    path = ctx.run_dir / RUN_SAE
    return path if (path / "artifact.json").is_file() else None


def choose_sae(
    ctx: RunContext, path: str | None, hook: str | None, train_options: dict[str, Any], what: str
) -> SAEChoice:
    """`path`, else the run's own sae_train SAE, else one trained here with `sae_train` (its
    defaults plus `train_options`, no evaluation): the analyzer then needs no file to run."""
    from ..activation.store import hook_units
    from .files import load_sae
    from .sae_train import SAETrain, SAETrainConfig

    info = ctx.model.info
    if path is not None:
        chosen = hook or check_sae_file(info, path, hook, True, what)
        sae = load_sae(path, d_in=hook_units(info, chosen), device=ctx.model.device)
        return SAEChoice(sae, str(Path(path).expanduser().resolve()), chosen)
    found = run_sae(ctx)
    if found is None:
        trainer = SAETrain(SAETrainConfig(**train_options, evaluate=False, export_saelens=False))
        trainer.cfg = trainer.validate(info, trainer.cfg)
        found = Path(trainer.run(ctx).summary["sae"])
        source = f"trained here by sae_train ({found})"
    else:
        source = f"sae_train of this run ({found})"
    chosen = hook or check_sae_file(info, str(found), None, False, what)
    sae = load_sae(found, d_in=hook_units(info, chosen), device=ctx.model.device)
    return SAEChoice(sae, source, chosen)


#: which corpus texts an analyzer reads: all of them, or the held-out split sae_train did not train on
TEXT_CHOICES = ("held_out", "all")


def check_source_options(info: ModelInfo, cfg: Any, what: str) -> None:
    """The options `sae_eval` and `sae_features` share (sae, hook, corpus, texts...), checked
    before weights load; `cfg.hook` is resolved in place."""
    from .sae_train import SAETrainConfig, check_options, resolve_hook
    from .workflow import CORPORA

    if cfg.texts not in TEXT_CHOICES:
        raise ConfigError(f"{what}.texts: {cfg.texts!r} is not one of {', '.join(TEXT_CHOICES)}")
    if cfg.corpus not in CORPORA:
        raise ConfigError(f"{what}.corpus: {cfg.corpus!r} is unknown; choose one of {', '.join(CORPORA)}")
    if cfg.max_texts is not None and cfg.max_texts < 1:
        raise ConfigError(f"{what}.max_texts must be >= 1 or null, got {cfg.max_texts}")
    corpus = SAETrainConfig(corpus=cfg.corpus, paths=cfg.paths, max_chars=cfg.max_chars, held_out=cfg.held_out,
                            max_length=cfg.max_length)  # fmt: skip
    check_options(corpus, what)
    if cfg.sae is not None:
        cfg.hook = check_sae_file(info, cfg.sae, cfg.hook, cfg.allow_other_hook, what)
    elif cfg.hook is not None:
        cfg.hook = resolve_hook(info, cfg.hook, what)


def sae_and_texts(ctx: RunContext, cfg: Any, what: str) -> tuple[SAEChoice, list[str]]:
    """The SAE (`choose_sae`) and the texts to read: the corpus, or its held-out split under the
    seed sae_train uses, cut to `max_texts`."""
    from .workflow import corpus_texts, split_held_out

    train_options = {"corpus": cfg.corpus, "paths": list(cfg.paths), "max_chars": cfg.max_chars,
                     "held_out": cfg.held_out, "max_length": cfg.max_length, "hook": cfg.hook}  # fmt: skip
    choice = choose_sae(ctx, cfg.sae, cfg.hook, train_options, what)
    texts = corpus_texts(cfg.corpus, ctx.inputs.texts, cfg.paths, cfg.max_chars)
    if cfg.texts == "held_out":
        texts = split_held_out(texts, cfg.held_out, ctx.seed)[1]
        if not texts:
            raise ConfigError(
                f"{what}: the corpus has no held-out texts (held_out=0 or a single text); "
                "raise held_out, give more texts, or set texts=all"
            )
    return choice, texts[: cfg.max_texts] if cfg.max_texts else texts


def estimated_source(info: ModelInfo, cfg: Any, workload: Any, what: str) -> tuple[Any, SAEConfig, str, list[int]]:
    """What `sae_and_texts` will choose, for an estimate (no weights): (the cost of getting the SAE:
    nothing, or training one here with sae_train's defaults; its config; its hook; the token
    lengths of the texts it will see). `sae_eval` and `sae_features` estimate through here."""
    from .files import read_sae_config
    from .sae_train import SAETrain, SAETrainConfig, resolve_hook, sae_config
    from .workflow import corpus_texts, split_held_out

    cost = workload.figures(0)
    if cfg.sae is not None:
        sae = read_sae_config(cfg.sae)
        hook = cfg.hook or sae.hook
    else:
        trainer = workload.planned.get("sae_train")
        if trainer is None:  # trained here with sae_train's defaults, without its evaluation
            options = {"corpus": cfg.corpus, "paths": list(cfg.paths), "max_chars": cfg.max_chars,
                       "held_out": cfg.held_out, "max_length": cfg.max_length, "hook": cfg.hook}  # fmt: skip
            trainer = SAETrainConfig(**options, evaluate=False, export_saelens=False)
            cost = cost + SAETrain(trainer).estimate(info, trainer, workload)
        hook = cfg.hook or resolve_hook(info, trainer.hook, what)
        sae = sae_config(info, trainer, hook)
    texts = corpus_texts(cfg.corpus, workload.texts, cfg.paths, cfg.max_chars)
    if cfg.texts == "held_out":
        texts = split_held_out(texts, cfg.held_out, workload.seed)[1]
    texts = texts[: cfg.max_texts] if cfg.max_texts else texts
    return cost, sae, hook, workload.token_lengths(texts, cfg.max_length or workload.max_length)
