"""From text to a trained SAE: pick a corpus, record one hook point, train from the store.

Why a separate layer: `train_sae` trains on any stream of activations; this module is what
the `sae_train` analyzer, the server and scripts share to get that stream from a model and
text the way SAE practice does it:

* the text is split into training and held-out texts first (seeded), so evaluation never
  sees a training token;
* activations are recorded once into an activation store (resumable safetensors shards,
  `interpsuite_plugins.activation.store`) and streamed back through a shuffle buffer, epoch
  after epoch, so memory is bounded by the buffer and not by the corpus;
* the activations are scaled to E||x|| = sqrt(d_in) while training (the coefficients' scale),
  and the scale is folded into the weights afterwards, so the saved SAE works on raw
  activations with no normalisation setting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from interpsuite.errors import ConfigError

from .corpus import python_docs_texts, text_files
from .model import SAEConfig, SparseAutoencoder
from .training import TrainHistory, TrainSettings, fold_activation_scale, norm_scaling_factor, store_batches, train_sae

if TYPE_CHECKING:
    from interpsuite.models import HookedModel

    from ..activation.store import ActivationStore

__all__ = [
    "CORPORA",
    "RecordStats",
    "TrainOutcome",
    "corpus_texts",
    "record_activations",
    "split_held_out",
    "train_on_store",
]

#: where training text comes from: the run's own inputs, Python's documentation, or .txt files
CORPORA = ("inputs", "python_docs", "files")
#: rows read to measure the activation scale (enough for a stable mean norm)
SCALE_SAMPLE_ROWS = 65_536


def corpus_texts(source: str, run_texts: Sequence[str], paths: Sequence[str] = (), max_chars: int = 2000) -> list[str]:
    """The texts of a corpus source (see `CORPORA`); an unknown source or no text is one line."""
    if source == "inputs":
        texts = [text for text in run_texts if text.strip()]
    elif source == "python_docs":
        texts = python_docs_texts(max_chars=max_chars)
    elif source == "files":
        if not paths:
            raise ConfigError("sae corpus: source 'files' needs paths=[...] (.txt files or folders of them)")
        texts = text_files(paths, max_chars=max_chars)
    else:
        raise ConfigError(f"sae corpus: source {source!r} is unknown; choose one of {', '.join(CORPORA)}")
    if not texts:
        raise ConfigError(f"sae corpus: source {source!r} gave no text; give texts or another source")
    return texts


def split_held_out(texts: Sequence[str], fraction: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training, held-out) texts: a seeded random `fraction` of whole texts is held out (at
    least one text when fraction > 0 and there are two or more; none when fraction is 0)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"sae corpus: held_out is a fraction of the texts in [0, 1), got {fraction}")
    n = len(texts)
    n_held = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(order[:n_held])
    return [t for i, t in enumerate(texts) if i not in held], [t for i, t in enumerate(texts) if i in held]


@dataclass
class RecordStats:
    """What recording wrote: rows (tokens), texts, wall time, and tokens per second."""

    path: str
    tokens: int
    texts: int
    seconds: float
    tokens_per_s: float
    resumed: bool


def record_activations(
    model: HookedModel,
    texts: Sequence[str],
    hook: str,
    folder: str | Path,
    *,
    batch_size: int = 8,
    max_length: int | None = 128,
    dtype: str = "float32",
    shard_tokens: int = 65_536,
    progress: Callable[..., Iterable] | None = None,
) -> tuple[ActivationStore, RecordStats]:
    """Record `hook` over `texts` into an activation store at `folder` (resumed when a store
    with the same setup is there) and open it for reading."""
    from ..activation.store import ActivationStore, StoreWriter

    writer = StoreWriter(
        folder, model, [hook], shard_tokens=shard_tokens, dtype=dtype, batch_size=batch_size, max_length=max_length
    )
    stats = writer.write(list(texts), progress=progress)
    store = ActivationStore(folder)
    rate = stats.rows_written / stats.seconds if stats.seconds > 0 else 0.0
    record = RecordStats(
        str(Path(folder).resolve()), len(store), store.texts_completed, stats.seconds, rate, stats.started_at != (0, 0)
    )
    return store, record


@dataclass
class TrainOutcome:
    """A trained SAE (working on raw activations) and how training went."""

    sae: SparseAutoencoder
    history: TrainHistory
    #: the factor activations were multiplied by while training (folded into the weights since)
    scale: float
    tokens: int
    seconds: float
    tokens_per_s: float


def _epochs(store: ActivationStore, hook: str, settings: TrainSettings, epochs: int, buffer: int, seed: int):
    """`epochs` passes over the store, each in its own seeded order (deterministic: resumable)."""
    for epoch in range(epochs):
        yield from store_batches(store, hook, settings.batch_size, buffer_tokens=buffer, seed=seed + 1000 * epoch)


def _scaled(batches: Iterable[torch.Tensor], scale: float) -> Iterator[torch.Tensor]:
    for chunk in batches:
        yield chunk * scale


def activation_scale(store: ActivationStore, hook: str, rows: int = SCALE_SAMPLE_ROWS) -> float:
    """`norm_scaling_factor` of the store's first `rows` rows (the same rows on every call)."""
    parts, held = [], 0
    for chunk in store.iter_batches(hook, min(rows, 8192), dtype=torch.float32):
        parts.append(chunk)
        held += chunk.shape[0]
        if held >= rows:
            break
    if not parts:
        raise ConfigError(f"activation store {store.path}: no rows of {hook}; record some text first")
    return norm_scaling_factor(torch.cat(parts)[:rows])


def train_on_store(
    store: ActivationStore,
    hook: str,
    cfg: SAEConfig,
    settings: TrainSettings,
    *,
    epochs: int = 1,
    normalize: bool = True,
    buffer_tokens: int = 262_144,
    seed: int = 0,
    fingerprint: Any = None,
) -> TrainOutcome:
    """Train a new SAE of `cfg` on `epochs` shuffled passes over the store's `hook` rows.

    `settings.total_tokens` / `steps` may stop earlier; asking for more tokens than the passes
    hold is refused before training (`ConfigError`), since the stream would end early and the
    learning-rate schedule would never decay."""
    if epochs < 1:
        raise ConfigError(f"sae training: epochs must be >= 1, got {epochs}")
    available = len(store) * epochs
    wanted = (settings.total_steps or 0) * settings.batch_size
    if wanted > available:
        raise ConfigError(
            f"sae training: the token budget ({wanted:,} tokens) is larger than the store holds "
            f"({len(store):,} tokens x {epochs} epoch(s) = {available:,}); record more text, raise epochs, "
            "or lower the budget"
        )
    buffer = max(buffer_tokens, 2 * settings.batch_size)
    scale = activation_scale(store, hook) if normalize else 1.0
    torch.manual_seed(seed)
    sae = SparseAutoencoder(cfg, seed=seed)
    sae.fingerprint = fingerprint
    stream: Iterable[torch.Tensor] = _epochs(store, hook, settings, epochs, buffer, seed)
    if scale != 1.0:
        stream = _scaled(stream, scale)
    started = time.perf_counter()
    history = train_sae(sae, stream, settings)
    seconds = time.perf_counter() - started
    if scale != 1.0:
        fold_activation_scale(sae, scale)
    rate = history.tokens / seconds if seconds > 0 else 0.0
    return TrainOutcome(sae, history, scale, history.tokens, seconds, rate)
