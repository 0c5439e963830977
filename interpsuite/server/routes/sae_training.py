"""POST /train-sae: train a small SAE on a built-in corpus at one hook point, save it, load it.

Why: a fresh install (the embedded model, offline) has no SAE, so the workbench's SAE view would
stay empty. This route gives the dashboard a "train one now" button over the engines the
`sae_train` analyzer uses (`interpsuite_plugins.sae.workflow`): the corpus is split into training
and held-out texts (seeded, whole texts), the hook point is recorded into a temporary activation
store, the SAE trains on shuffled passes over it (activations normalised, the scale folded back),
`evaluate_sae` measures it on the held-out texts, and it is saved in our format, with the model's
fingerprint, under `<runs_dir>/saes/<name>`: exactly where POST /load-sae {"path": "saes/<name>"}
finds it. With `load` (the default) it is then loaded into the workbench.

Every request error is answered before the pool: the hook point (one vector per token, d_model
or d_mlp wide), the size limits (413), the SAE options (400) and the name (400; 409 when the
folder exists). Recording and evaluation stop between batches once the request gives up (504 or
a disconnect); the training loop itself is short at these sizes and runs to its end.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from ...errors import ConfigError
from ...progress import Cancelled, CancelToken
from ..analysis import deadline, submit, wait
from ..errors import ApiError
from ..state import Loaded, ServerState
from .deps import get_state

router = APIRouter(tags=["sae"])

#: the folder under runs_dir that trained SAEs go to (load-sae paths are relative to runs_dir)
SAES_DIR = "saes"
#: request limits: a bigger SAE or budget is a job for `interpsuite analyze` with sae_train
MAX_TOKENS = 200_000
MAX_WIDTH = 16_384
#: defaults: about 25 s on SmolLM2 on a 2-core CPU, loading included (20,000 tokens: about 110 s)
DEFAULT_TOKENS = 5_000
DEFAULT_WIDTH = 512
#: tokens per recorded text (python_docs texts are cut at MAX_CHARS characters, ~250 tokens)
MAX_LENGTH = 256
MAX_CHARS = 1000
#: held-out texts: this fraction of the corpus, evaluated on a tenth of the training tokens within
#: these bounds (the evaluation makes three passes per token: clean, spliced, zero-ablated)
HELD_OUT = 0.1
HELD_OUT_TOKENS = (256, 2048)
#: passes over the training texts a small corpus (english: ~450 tokens) may be repeated for
MAX_EPOCHS = 50
#: sites an SAE here may read: d_model wide (residual, attention/MLP outputs) or d_mlp wide
D_MODEL_SITES = ("embed", "final", "resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out")
D_MLP_SITES = ("mlp.pre", "mlp.up", "mlp.post")
#: a trained SAE's folder name (one plain folder under <runs_dir>/saes)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _default_architecture() -> str:
    from interpsuite_plugins.sae.sae_train import SAETrainConfig

    return SAETrainConfig.architecture


class TrainSAERequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hook: str | None = Field(default=None, description="hook point, e.g. blocks.3.resid_post; null: a middle layer")
    width: int = Field(default=DEFAULT_WIDTH, ge=1, description=f"latents (at most {MAX_WIDTH})")
    architecture: Literal["topk", "relu", "jumprelu"] = Field(
        default_factory=_default_architecture, description="absent: what sae_train defaults to (topk)"
    )
    k: int | None = Field(default=None, ge=1, description="topk: active latents per token (null: sae_train's 32)")
    tokens: int = Field(default=DEFAULT_TOKENS, ge=64, description=f"training tokens (at most {MAX_TOKENS:,})")
    corpus: Literal["python_docs", "english"] = Field(
        default="python_docs", description="python_docs: Python's reference docs (~113k tokens); english: 40 sentences"
    )
    name: str | None = Field(default=None, description="folder under <runs_dir>/saes (null: sae-<hook>-<width>-<time>)")
    load: bool = Field(default=True, description="load it into the workbench afterwards (as POST /load-sae)")
    seed: int = Field(default=0, ge=0)


# --- checks before the pool -------------------------------------------------------------------


def check_hook(info: Any, hook: str | None) -> str:
    """The full hook name (default: the middle layer's resid_post); 400 for a point that is not
    there or whose activation is not one d_model or d_mlp vector per token."""
    from interpsuite_plugins.sae.sae_train import resolve_hook

    from ...hooks import parse_hook_name

    name = resolve_hook(info, hook, "train-sae")
    site = parse_hook_name(name)[1]
    if site not in (*D_MODEL_SITES, *D_MLP_SITES):
        raise ConfigError(
            f"train-sae.hook: {name} is not a d_model or d_mlp wide point; give one of the sites "
            f"{', '.join((*D_MODEL_SITES, *D_MLP_SITES))} (e.g. blocks.0.resid_post)"
        )
    return name


def check_limits(body: TrainSAERequest) -> None:
    """413 for a request larger than the server trains (one line each)."""
    if body.tokens > MAX_TOKENS:
        raise ApiError(
            413,
            f"tokens={body.tokens:,} is over the server's limit of {MAX_TOKENS:,}; train larger SAEs with sae_train",
        )
    if body.width > MAX_WIDTH:
        raise ApiError(
            413, f"width={body.width:,} is over the server's limit of {MAX_WIDTH:,}; train wider SAEs with sae_train"
        )


def check_name(name: str) -> str:
    """400 unless `name` is one plain folder name."""
    if not _NAME.match(name) or ".." in name:
        raise ApiError(
            400,
            f"train-sae: name {name!r} must be one folder name of letters, digits, '.', '_' or '-' "
            f"(no '/', no '..', at most 128 characters); it is created under <runs_dir>/{SAES_DIR}",
        )
    return name


def saes_root(runs_dir: Path) -> Path:
    root = Path(runs_dir) / SAES_DIR
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _taken(folder: Path) -> bool:
    return folder.exists() or folder.is_symlink()


def target_folder(runs_dir: Path, name: str | None, hook: str, width: int) -> Path:
    """`<runs_dir>/saes/<name>`. A given name that exists is 409; the default name
    `sae-<hook>-<width>-<UTC time>` takes a `-2`, `-3`, ... suffix instead, so two quick
    requests without a name both succeed."""
    root = saes_root(runs_dir)
    if name is not None:
        target = root / check_name(name)
        if _taken(target):
            raise ApiError(
                409,
                f"train-sae: {SAES_DIR}/{name} exists already; choose another name (or load it with POST /load-sae)",
            )
        return target
    stem = f"sae-{hook}-{width}-{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}"
    target, n = root / stem, 1
    while _taken(target):
        n += 1
        target = root / f"{stem}-{n}"
    return target


# --- the work (in the pool) ------------------------------------------------------------------------


def _checking(cancel: CancelToken) -> Callable[..., Iterable]:
    """A `progress(items, desc, total)` for the engines that stops between items once cancelled."""

    def progress(items: Iterable, desc: str = "", total: int | None = None) -> Iterator:
        for item in items:
            if cancel.cancelled:
                raise Cancelled(f"train-sae cancelled during {desc or 'work'}")
            yield item

    return progress


def corpus(name: str) -> list[str]:
    """The texts of a built-in corpus (both offline)."""
    if name == "english":
        from interpsuite_plugins.sae.workbench import default_corpus

        return default_corpus()
    from interpsuite_plugins.sae.workflow import corpus_texts

    return corpus_texts("python_docs", (), max_chars=MAX_CHARS)


def take_tokens(lengths: Sequence[int], order: Sequence[int], budget: int) -> list[int]:
    """Indices from `order` until their (cut) lengths reach `budget` tokens (all when fewer)."""
    chosen, held = [], 0
    for i in order:
        if held >= budget:
            break
        chosen.append(i)
        held += min(lengths[i], MAX_LENGTH)
    return chosen


def choose_texts(model: Any, texts: Sequence[str], tokens: int, seed: int, corpus_name: str):
    """(training texts, their tokens, epochs, held-out texts): training texts in a seeded order
    until they hold `tokens` tokens (a small corpus is passed over several epochs instead);
    held-out texts (never trained on) for about a tenth as many tokens (see HELD_OUT_TOKENS)."""
    import torch
    from interpsuite_plugins.sae.workflow import split_held_out

    train, held = split_held_out(texts, HELD_OUT, seed)
    lengths = model.token_lengths(train)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    picked = take_tokens(lengths, order, tokens)
    available = sum(min(lengths[i], MAX_LENGTH) for i in picked)
    epochs = max(1, math.ceil(tokens / max(available, 1)))
    if epochs > MAX_EPOCHS:
        raise ConfigError(
            f"train-sae.tokens: {tokens:,} tokens would be {epochs} passes over the {corpus_name} corpus "
            f"({available:,} training tokens, at most {MAX_EPOCHS}); lower tokens or use corpus python_docs"
        )
    held_lengths = model.token_lengths(held)
    held_budget = min(HELD_OUT_TOKENS[1], max(HELD_OUT_TOKENS[0], tokens // 10))
    held_texts = [held[i] for i in take_tokens(held_lengths, range(len(held)), held_budget)]
    return [train[i] for i in picked], available, epochs, held_texts


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def train_and_save(
    model: Any, body: TrainSAERequest, hook: str, target: Path, cancel: CancelToken, batch_size: int = 8
) -> dict:
    """Record, train, evaluate and save (blocking; runs in the pool; `batch_size` texts per
    forward pass). Returns the `train` summary."""
    from interpsuite_plugins.sae.evaluation import evaluate_sae
    from interpsuite_plugins.sae.sae_train import train_settings
    from interpsuite_plugins.sae.workflow import record_activations, train_on_store

    from ...artifacts import ModelFingerprint

    started = time.perf_counter()
    progress = _checking(cancel)
    cfg = options(body)
    sae_cfg = sae_config_of(model.info, cfg, hook)
    texts = corpus(body.corpus)
    train_texts, _, epochs, held_texts = choose_texts(model, texts, body.tokens, body.seed, body.corpus)
    settings = train_settings(cfg, body.tokens, None, False)
    with tempfile.TemporaryDirectory(prefix="interpsuite-train-sae-") as work:
        store, recorded = record_activations(
            model, train_texts, hook, Path(work) / "store", batch_size=batch_size, max_length=MAX_LENGTH,
            progress=progress,
        )  # fmt: skip
        if cancel.cancelled:
            raise Cancelled("train-sae cancelled after recording")
        outcome = train_on_store(
            store, hook, sae_cfg, settings, epochs=epochs, seed=body.seed, fingerprint=ModelFingerprint.of(model)
        )
    sae = outcome.sae.eval()
    evaluated = time.perf_counter()
    evaluation = None
    if held_texts:
        evaluation = evaluate_sae(
            model, sae, held_texts, hook, batch_size=batch_size, max_length=MAX_LENGTH, progress=progress
        )
    eval_seconds = time.perf_counter() - evaluated
    if cancel.cancelled:  # the request gave up (504, disconnect): leave no SAE it never reported
        raise Cancelled("train-sae cancelled before saving")
    save(sae, target)
    history = outcome.history
    held: dict[str, Any] = {"texts": len(held_texts), "tokens": 0}
    if evaluation is not None:
        ev = _number(evaluation.explained_variance)
        held = {
            "texts": len(held_texts),
            "tokens": evaluation.n_tokens,
            "mse": _number(evaluation.mse),
            "explained_variance": ev,
            "fvu": None if ev is None else 1.0 - ev,
            "l0": _number(evaluation.l0),
            "dead_fraction": _number(evaluation.dead_fraction),
            "dense_fraction": _number(evaluation.dense_fraction),
            "ce_loss_recovered": _number(evaluation.ce_loss_recovered),
        }
    return {
        "corpus": body.corpus,
        "texts": len(train_texts),
        "tokens_recorded": recorded.tokens,
        "epochs": epochs,
        "tokens": history.tokens,
        "steps": history.steps_done,
        "batch_size": settings.batch_size,
        "final_loss": _number(history.loss[-1]) if history.loss else None,
        "final_batch_explained_variance": _number(history.explained_variance[-1])
        if history.explained_variance
        else None,
        "activation_scale": _number(outcome.scale),
        "record_seconds": round(recorded.seconds, 3),
        "train_seconds": round(outcome.seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "held_out": held,
    }


def options(body: TrainSAERequest) -> Any:
    """The request as the sae_train analyzer's config (its defaults for everything else)."""
    from interpsuite_plugins.sae.sae_train import SAETrainConfig, check_options

    cfg = SAETrainConfig(hook=body.hook, architecture=body.architecture, width=body.width, max_length=MAX_LENGTH)
    if body.k is not None:
        cfg.k = body.k
    check_options(cfg, "train-sae")
    return cfg


def sae_config_of(info: Any, cfg: Any, hook: str) -> Any:
    """The SAE's config (k <= width, ...) and a memory check, both one-line ConfigErrors."""
    from interpsuite_plugins.sae.sae_train import check_fits_memory, sae_config

    sae_cfg = sae_config(info, cfg, hook)
    check_fits_memory(sae_cfg, "train-sae")
    return sae_cfg


def save(sae: Any, target: Path) -> None:
    """Save into a hidden sibling, then rename: a half-written SAE never has the name, and a
    request that raced for the same name gets 409."""
    partial = target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        sae.save(partial)
        if _taken(target):
            raise ApiError(409, f"train-sae: {SAES_DIR}/{target.name} was created meanwhile; choose another name")
        os.rename(partial, target)
    except OSError as err:
        raise ApiError(409, f"train-sae: cannot create {SAES_DIR}/{target.name} ({err.strerror})") from None
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


# --- the route -----------------------------------------------------------------------------------


@router.post("/train-sae", summary="Train a small SAE on a built-in corpus at a hook point, save it, load it")
async def train_sae(body: TrainSAERequest, state: ServerState = Depends(get_state)) -> dict:
    check_limits(body)
    model = state.current().model
    info = model.info
    hook = check_hook(info, body.hook)
    cfg = options(body)
    sae_config_of(info, cfg, hook)
    if body.load and not info.is_causal:
        raise ConfigError(f"{info.name} is an encoder; the workbench needs a causal LM, so pass load: false")
    target = target_folder(state.settings.runs_dir, body.name, hook, body.width)
    name = target.name
    until = deadline(state.settings)

    def work(loaded: Loaded, cancel: CancelToken) -> dict:
        if loaded.model is not model:
            raise ConfigError("the model was switched while the request waited; send it again")
        return train_and_save(loaded.model, body, hook, target, cancel, state.settings.batch_size)

    summary = await wait(submit(state, work, f"train-sae {hook} width {body.width}"), state.settings, until)
    path = f"{SAES_DIR}/{name}"
    answer: dict[str, Any] = {
        "path": path,
        "hook": hook,
        "width": body.width,
        "architecture": body.architecture,
        "k": cfg.k if body.architecture == "topk" else None,
        "train": summary,
        "loaded": None,
    }
    if body.load:
        from .workbench import LoadSAERequest, load_sae

        answer["loaded"] = await load_sae(LoadSAERequest(path=path), state)
    return answer
