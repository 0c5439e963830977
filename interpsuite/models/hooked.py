"""HookedModel: one model, one hook-point vocabulary, captures and batched interventions.

A HookedModel wraps a model it may not own (a training model, a model a server shares
between requests). So wrapping changes nothing a caller can observe: no `.eval()`, no
`.to()`, no tokenizer settings, no module added or removed. While wrapped, the model
carries listeners (forward hooks and a block-skipping `forward` on each block) that act
only for passes of this HookedModel in the calling thread; `close()` removes them all.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
import types
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import ConfigError, HookError
from ..hooks import (
    CURRENT_PASS,
    ActivationCache,
    HookPlan,
    Intervention,
    PassState,
    current_pass,
    hook_layer,
    install_listeners,
)
from ..windows import TokenWindow
from .adapters import adapter_for
from .attention import PREFIX, SUPPORTED, register_attention
from .info import ModelInfo
from .usage import active_usage

if TYPE_CHECKING:
    from .splice import SAESplice


def _check_max_length(max_length: int | None) -> None:
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ConfigError(f"max_length must be a positive number of tokens or None, got {max_length!r}")


@dataclass
class TokenBatch:
    """Right-padded token ids with their mask and the decoded tokens (for tables/figures)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[list[str]]
    text_ids: list[int]
    #: the positions each row owns when its text is a window of a long document
    #: (interpsuite.windows); None: every real token is the row's own
    owned_mask: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def counted_mask(self) -> torch.Tensor:
        """The tokens an analyzer counts: every real token, or a window's own tokens only, so
        statistics over windows of a long document count each document token once."""
        return self.attention_mask if self.owned_mask is None else self.owned_mask

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)

    @property
    def last_index(self) -> torch.Tensor:
        """Position of each row's last real token."""
        return self.lengths - 1

    def last_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(`logits_to_keep` positions covering every row's last real token, each row's column in them)."""
        keep, column = torch.unique(self.last_index, sorted=True, return_inverse=True)
        return keep, column

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def repeat(self, k: int) -> TokenBatch:
        """k copies of the batch, copy-major: rows j*B .. (j+1)*B-1 are copy j."""
        return TokenBatch(
            self.input_ids.repeat(k, 1),
            self.attention_mask.repeat(k, 1),
            self.tokens * k,
            self.text_ids * k,
            None if self.owned_mask is None else self.owned_mask.repeat(k, 1),
        )

    def to(self, device: torch.device | str) -> TokenBatch:
        owned = None if self.owned_mask is None else self.owned_mask.to(device)
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.tokens, self.text_ids, owned)


@dataclass
class ForwardResult:
    """`output` is logits for causal LMs and the last hidden state for encoders."""

    output: torch.Tensor
    cache: ActivationCache


@dataclass
class PrefixCache:
    """Clean keys and values of the first `length` positions of a batch of `rows` rows.

    In a causal model an intervention at position p cannot change anything at positions
    before p, at any layer; a pass that starts at p attends to these instead of recomputing.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    rows: int

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    def cache(self, copies: int | Sequence[int]):
        """A cache of `copies` copies of the prefix, or per layer (a pass whose rows join at
        later layers holds only the rows running at each layer)."""
        from transformers import DynamicCache

        per_layer = [copies] * len(self.keys) if isinstance(copies, int) else list(copies)
        data = [
            (k.repeat(n, 1, 1, 1), v.repeat(n, 1, 1, 1))
            for k, v, n in zip(self.keys, self.values, per_layer, strict=True)
        ]
        return DynamicCache(ddp_cache_data=data)

    def truncated(self, length: int) -> PrefixCache:
        return PrefixCache([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values], self.rows)


class HookedModel:
    """A transformers model seen through the hook-point vocabulary (see docs/model-layer.md).

    Thread-safe: forwards, captures, sweeps and gradients may run from several threads at
    once and give exactly what they give alone; each pass keeps its plan in per-thread
    state. The only lock serialises tokenizer calls (a fast tokenizer's Rust state is not
    safe to share). `hooks_left()` counts passes still open (0 between calls).
    """

    def __init__(self, hf_model, tokenizer, info: ModelInfo | None = None):
        self.hf_model = hf_model
        self.tokenizer = tokenizer
        config = hf_model.config
        adapter_class = adapter_for(config.model_type)
        self.info: ModelInfo = info or adapter_class.describe(getattr(config, "name_or_path", "") or "model", config)
        self.adapter = adapter_class(hf_model, self.info)
        self.device = _input_device(hf_model)
        self._tokenizer_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._open_passes = 0
        self._closed = False
        parameters = inspect.signature(hf_model.forward).parameters
        self._cache_keyword = "cache" if "cache" in parameters else "past_key_values"
        self._undo: list = []
        try:
            self._install()
        except Exception:
            self.close()
            raise

    # --- wrapping -----------------------------------------------------------------------
    def _install(self) -> None:
        config = self.hf_model.config
        current = config._attn_implementation or "eager"
        base = current[len(PREFIX) :] if current.startswith(PREFIX) else current
        if base not in SUPPORTED:
            raise ConfigError(
                f"attention implementation {current!r} is not supported for hooks; load the model with "
                f"attn_implementation='sdpa' or 'eager'"
            )
        if current != PREFIX + base:
            config._attn_implementation = register_attention(base)
            self._undo.append(lambda: setattr(config, "_attn_implementation", current))
        else:
            register_attention(base)
        self.attention_layer_of = {
            id(self.adapter.attention_module(layer)): layer for layer in range(self.info.n_layers)
        }
        handles = install_listeners(self, self.adapter.sites)
        self._undo.append(lambda: [h.remove() for h in handles])
        for layer, block in enumerate(self.adapter.blocks()):
            self._install_block(layer, block)

    def _install_block(self, layer: int, block: torch.nn.Module) -> None:
        """Blocks below a pass's start layer hand their input through; the start block reads the
        stored residual stream. Per pass, so another thread's pass still runs every block."""
        owner = self

        def start_hook(module, args, kwargs):
            state = current_pass(owner)
            if state is None or state.start_resid is None or layer < state.start_layer:
                return None
            if layer == state.start_layer:
                hidden = state.start_resid
            elif not state.joins:
                return None
            else:
                hidden = args[0] if args else kwargs["hidden_states"]
                joining = state.joins.get(layer)
                if joining is not None:
                    hidden = torch.cat([hidden, joining])
            if state.joins and hidden.shape[0] != state.full_rows:
                # the block sees only the rows running so far: cut the batch axis of the
                # masks and other per-row tensors the model computed for the whole batch
                args = _first_rows(args, hidden.shape[0], state.full_rows)
                kwargs = _first_rows(kwargs, hidden.shape[0], state.full_rows)
            if args:
                return (hidden, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": hidden}

        start_hook.interpsuite = True
        handle = block.register_forward_pre_hook(start_hook, with_kwargs=True, prepend=True)
        had_own_forward = "forward" in block.__dict__
        original = block.forward

        def forward(module, *args, **kwargs):
            state = current_pass(owner)
            if state is not None and layer < state.start_layer:
                return args[0] if args else kwargs["hidden_states"]
            if module is not block:  # a copy of the block (copy.deepcopy of the model): its own weights
                return type(module).forward(module, *args, **kwargs)
            return original(*args, **kwargs)

        # bound to the block (not a closure over it), so copy.deepcopy(model.hf_model) rebinds it
        # to the copied block and the copy computes with its own weights
        block.forward = types.MethodType(forward, block)

        def undo() -> None:
            handle.remove()
            if had_own_forward:
                block.forward = original
            else:
                del block.forward

        self._undo.append(undo)

    def close(self) -> None:
        """Remove everything wrapping installed: the caller's model is exactly as before."""
        while self._undo:
            self._undo.pop()()
        self._closed = True

    def __enter__(self) -> HookedModel:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _pass(
        self,
        plan: HookPlan,
        start_layer: int = 0,
        start_resid: torch.Tensor | None = None,
        joins: dict[int, torch.Tensor] | None = None,
        full_rows: int = 0,
    ):
        if self._closed:
            raise HookError("this HookedModel was closed; wrap the model again to use hooks")
        state = PassState(self, self.adapter.sites, plan, start_layer, parent=current_pass(self))
        state.start_resid = start_resid
        state.joins = joins or {}
        state.full_rows = full_rows
        token = CURRENT_PASS.set(state)
        with self._count_lock:
            self._open_passes += 1
        try:
            yield state
        finally:
            CURRENT_PASS.reset(token)
            with self._count_lock:
                self._open_passes -= 1

    # --- inputs ------------------------------------------------------------------------
    def tokenize(
        self, texts: Sequence[str], max_length: int | None = None, text_ids: Sequence[int] | None = None
    ) -> TokenBatch:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ConfigError("no texts to tokenize: give at least one non-empty text")
        _check_max_length(max_length)
        rows = self._encode(texts, max_length)
        ids, mask = self._right_padded(rows)
        lengths = mask.sum(dim=1).tolist()
        usage = active_usage()
        if usage is not None:
            full = lengths
            if max_length is not None and max(lengths) >= max_length:  # only full rows can have been cut
                full = self.token_lengths(texts)
            usage.record(list(texts), lengths, full, max_length)
        tokens = [
            [self._readable(t) for t in self.tokenizer.convert_ids_to_tokens(row[:length].tolist())]
            for row, length in zip(ids, lengths, strict=True)
        ]
        ids_list = list(text_ids) if text_ids is not None else list(range(len(texts)))
        owned = self._owned_mask(texts, mask)
        return TokenBatch(ids, mask, tokens, ids_list, owned).to(self.device)

    def _encode(self, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
        """Token ids of each text; a window of a long document (TokenWindow) brings its own."""
        rows: list[list[int] | None] = [
            list(t.input_ids[:max_length] if max_length else t.input_ids) if isinstance(t, TokenWindow) else None
            for t in texts
        ]
        plain = [i for i, row in enumerate(rows) if row is None]
        if plain:
            with self._tokenizer_lock:
                encoded = self.tokenizer(
                    [texts[i] for i in plain], truncation=max_length is not None, max_length=max_length
                )
            for i, row in zip(plain, encoded["input_ids"], strict=True):
                rows[i] = list(row)
        return rows

    @staticmethod
    def _owned_mask(texts: Sequence[str], mask: torch.Tensor) -> torch.Tensor | None:
        if not any(isinstance(t, TokenWindow) for t in texts):
            return None
        owned = mask.clone()
        for row, text in enumerate(texts):
            if isinstance(text, TokenWindow):
                window = text.window
                owned[row] = 0
                lo = window.prefix + window.owned_start - window.start
                hi = window.prefix + window.owned_stop - window.start
                owned[row, lo:hi] = mask[row, lo:hi]
        return owned

    def _right_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad ourselves, so the caller's tokenizer keeps its padding side and pad token."""
        width = max((len(r) for r in rows), default=0)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids, mask

    def _readable(self, token: str) -> str:
        text = self.tokenizer.convert_tokens_to_string([token])
        return text if text else token

    def batches(self, texts: Sequence[str], batch_size: int, max_length: int | None = None) -> Iterator[TokenBatch]:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            yield self.tokenize(chunk, max_length, range(start, start + len(chunk)))

    def token_id(self, text: str, what: str = "target", allow_first_piece: bool = False) -> tuple[int, str]:
        """(id, note) of a one-token string such as ' Mary'; empty, unknown and multi-piece strings
        are refused naming the pieces (or, with allow_first_piece, the first piece is used and
        `note` says so)."""
        if not text:
            raise ConfigError(f"{what} is an empty string; give a token such as ' Mary'")
        with self._tokenizer_lock:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        unk = self.tokenizer.unk_token_id
        if not ids or (unk is not None and unk in ids):
            raise ConfigError(f"{what} {text!r} is not in the vocabulary of {self.info.name} (pieces {pieces})")
        if len(ids) > 1:
            if not allow_first_piece:
                raise ConfigError(
                    f"{what} {text!r} is split by the tokenizer into {len(ids)} pieces {pieces}, not one; give a "
                    f"single-token {what} or set allow_first_piece: true to use the first piece {pieces[0]!r}"
                )
            return int(ids[0]), f"{what} {text!r} is {len(ids)} pieces {pieces}: using the first piece {pieces[0]!r}"
        if not 0 <= int(ids[0]) < self.info.vocab_size:
            raise ConfigError(
                f"{what} {text!r} has id {ids[0]} outside the model's vocabulary ({self.info.vocab_size})"
            )
        return int(ids[0]), self._space_hint(text, what)

    def _space_hint(self, text: str, what: str) -> str:
        """A note when `text` lacks the leading space a mid-sentence word has in this vocabulary
        (a shell eats the space of target=" Paris" unless the whole override is quoted)."""
        if text[:1].isspace() or not text[:1].isalnum():
            return ""
        with self._tokenizer_lock:
            spaced = self.tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        if len(spaced) != 1:
            return ""
        return (
            f"{what} {text!r} has no leading space; mid-sentence the word is {' ' + text!r} (id {spaced[0]}). "
            f"If you meant that, quote the whole override: 'key=\" {text}\"'"
        )

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text has before any truncation (what `max_length` would cut is the excess)."""
        return [len(ids) for ids in self._encode(list(texts), None)]

    def token_offsets(self, texts: Sequence[str], max_length: int | None = None) -> list[list[tuple[int, int]]]:
        """Character span of every token `tokenize` makes of each text (special tokens: (0, 0)).

        Word-level analyses (a tag per word, a word inside a template) map words to sub-tokens
        through these spans, whatever the tokenizer; it needs a fast (Rust) tokenizer.
        """
        _check_max_length(max_length)
        if not getattr(self.tokenizer, "is_fast", False):
            raise ConfigError(
                f"{self.info.name}: its tokenizer is not a fast tokenizer, so token character offsets are "
                f"unavailable; word-level analyses need one (load the model with a fast tokenizer)"
            )
        with self._tokenizer_lock:
            encoded = self.tokenizer(
                list(texts), truncation=max_length is not None, max_length=max_length, return_offsets_mapping=True
            )
        return [[(int(a), int(b)) for a, b in row] for row in encoded["offset_mapping"]]

    def count_tokens(self, texts: Sequence[str], max_length: int | None = None) -> int:
        """Real tokens the texts tokenize to (as `tokenize` would), without building batches."""
        _check_max_length(max_length)
        return sum(len(ids) for ids in self._encode(list(texts), max_length))

    def to_single_token(self, text: str) -> int:
        """The id of a one-token string (e.g. ' Mary'); a clear error otherwise."""
        return self.token_id(text)[0]

    # --- hook points -------------------------------------------------------------------
    @property
    def sites(self):
        return self.adapter.sites

    def hook_names(self) -> list[str]:
        return list(self.adapter.sites)

    @contextlib.contextmanager
    def hooks(
        self,
        capture: Iterable[str] = (),
        interventions: Iterable[Intervention] = (),
        detach: bool = True,
    ) -> Iterator[ActivationCache]:
        """Capture/intervene during the forward passes this thread runs inside the block."""
        plan = HookPlan(tuple(capture), tuple(interventions), detach)
        with self._pass(plan) as state:
            yield state.cache
        state.check_fired()

    def forward(
        self,
        batch: TokenBatch,
        capture: Iterable[str] = (),
        interventions: Iterable[Intervention] = (),
        *,
        grad: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        start_layer: int | None = None,
        start_resid: torch.Tensor | None = None,
        prefix: PrefixCache | None = None,
        joins: Mapping[int, torch.Tensor] | None = None,
    ) -> ForwardResult:
        """One forward pass with captures and interventions.

        With `start_layer`/`start_resid` (= a reference run's `blocks.{L}.resid_pre`), the blocks
        below L are skipped: interventions at L or later cannot change them. With `prefix`
        (causal LMs), positions before `prefix.length` are not recomputed either: their keys
        and values come from the clean run, `start_resid` holds only the later positions, and
        captures, interventions and `logits_to_keep` address positions from `prefix.length` on.

        With `joins` ({layer: rows' resid_pre there}), rows enter the pass in stages: it starts
        with `start_resid`'s rows at `start_layer` and appends `joins[L]`'s rows after those
        already running as it reaches layer L (the batch's rows must be ordered so, and every
        intervention must lie at or after its rows' layer). Each row then costs only the blocks
        from its own start, which is what a sweep whose items start at different layers needs.
        With a `prefix`, its cache holds the running rows of each layer (`PrefixCache.cache`).
        """
        capture = tuple(capture)
        interventions = tuple(interventions)
        kwargs: dict = {"attention_mask": batch.attention_mask, "use_cache": False}
        if self.info.is_causal:
            kwargs["logits_to_keep"] = logits_to_keep
        joins = dict(joins or {})
        skip = (start_layer is not None and start_layer > 0) or prefix is not None or bool(joins)
        start_layer = start_layer or 0
        if skip:
            if start_resid is None:
                raise HookError("start_layer needs start_resid (the clean resid_pre at that layer)")
            _check_joins(joins, start_layer, start_resid, batch.size, self.info.n_layers)
            early = [n for n in (*capture, *(iv.hook for iv in interventions)) if hook_layer(n) < start_layer]
            if early:
                raise HookError(f"hook points {early} lie before start_layer={start_layer}")
            # only its shape matters (the whole batch): the start block reads start_resid
            whole = start_resid.new_zeros(batch.size, *start_resid.shape[1:]) if joins else start_resid
            kwargs["inputs_embeds"] = whole
            if prefix is not None:
                kwargs[self._cache_keyword] = prefix.cache(
                    _running_copies(joins, start_resid.shape[0], self.info.n_layers, prefix.rows)
                    if joins
                    else batch.size // prefix.rows
                )
        else:
            kwargs["input_ids"] = batch.input_ids
        plan = HookPlan(capture, interventions, detach=not grad)
        with (
            torch.set_grad_enabled(grad),
            self._pass(plan, start_layer, start_resid if skip else None, joins, batch.size) as state,
        ):
            out = self.hf_model(**kwargs)
        state.check_fired()
        output = out.logits if self.info.is_causal else out.last_hidden_state
        return ForwardResult(output, state.cache)

    def reference_run(
        self,
        batch: TokenBatch,
        capture: Iterable[str] = (),
        interventions: Iterable[Intervention] = (),
        *,
        keep_prefix: bool = True,
    ) -> tuple[ForwardResult, PrefixCache | None]:
        """A no-grad pass that later passes start from: its captures and, in causal LMs with
        `keep_prefix`, every layer's keys and values (the last logit only is computed)."""
        with_cache = keep_prefix and self.info.is_causal
        plan = HookPlan(tuple(capture), tuple(interventions))
        kwargs: dict = {"logits_to_keep": 1} if self.info.is_causal else {}
        if with_cache:
            from transformers import DynamicCache

            # a cache built without the config keeps every position of every layer: the one the
            # model would build keeps only the last window of sliding-window layers (Mistral,
            # Qwen2, Gemma-2), and a prefix must be cut at any position
            kwargs[self._cache_keyword] = DynamicCache()
        with torch.no_grad(), self._pass(plan) as state:
            out = self.hf_model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                use_cache=with_cache,
                **kwargs,
            )
        state.check_fired()
        prefix = None
        if with_cache:
            kv = _output_cache(out)
            prefix = PrefixCache([layer.keys for layer in kv.layers], [layer.values for layer in kv.layers], batch.size)
        output = out.logits if self.info.is_causal else out.last_hidden_state
        return ForwardResult(output, state.cache), prefix

    def run_with_cache(self, batch: TokenBatch, names: Iterable[str]) -> ForwardResult:
        return self.forward(batch, capture=names)

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        return self.adapter.unembed(resid)

    # --- batched sweeps ----------------------------------------------------------------
    def sweep(self, batch: TokenBatch, items, metric, **options) -> torch.Tensor:
        """N intervention sets as batched passes: see `interpsuite.models.sweep.sweep`."""
        from .sweep import sweep

        return sweep(self, batch, items, metric, **options)

    def sae_splice(self, sae, hook: str | None = None, keep_error: bool = True, **options) -> SAESplice:
        """A sparse autoencoder spliced in at `hook` (default: the SAE's `cfg.hook`), for live
        feature edits: `with model.sae_splice(sae) as s: s.ablate(3); s.run(text)`. See
        `interpsuite.models.splice.SAESplice` (options: allow_other_hook, reuse_prefix)."""
        from .splice import SAESplice

        return SAESplice(self, sae, hook, keep_error, **options)

    def hooks_left(self) -> int:
        """Passes of this model still open in any thread (0 between calls, also after errors)."""
        return self._open_passes


def _check_joins(
    joins: Mapping[int, torch.Tensor], start_layer: int, start_resid: torch.Tensor, rows: int, n_layers: int
) -> None:
    """Staged rows must join after the start, inside the model, and add up to the batch."""
    if not joins:
        return
    bad = [layer for layer in joins if not start_layer < layer < n_layers]
    if bad:
        raise HookError(f"rows may join only at layers {start_layer + 1}..{n_layers - 1} of this pass, not {bad}")
    total = start_resid.shape[0] + sum(int(t.shape[0]) for t in joins.values())
    if total != rows:
        raise HookError(f"start_resid and joins hold {total} rows for a batch of {rows}")


def _running_copies(joins: Mapping[int, torch.Tensor], first_rows: int, n_layers: int, rows_per_copy: int) -> list[int]:
    """Copies of the prefix each layer's cache holds: the rows running there."""
    running, counts = first_rows, []
    for layer in range(n_layers):
        if layer in joins:  # only layers after the start (`_check_joins`)
            running += int(joins[layer].shape[0])
        counts.append(running // rows_per_copy)  # below the start: never read
    return counts


def _first_rows(value, n: int, full: int):
    """`value` with every per-row tensor (a batch axis of `full` rows, at least 2-d) cut to its
    first n rows, inside tuples, lists and dicts; anything else (caches, 1-d positions) as is."""
    if isinstance(value, torch.Tensor):
        return value[:n] if value.ndim >= 2 and value.shape[0] == full else value
    if isinstance(value, tuple):
        return tuple(_first_rows(v, n, full) for v in value)
    if isinstance(value, list):
        return [_first_rows(v, n, full) for v in value]
    if isinstance(value, dict):
        return {k: _first_rows(v, n, full) for k, v in value.items()}
    return value


def _output_cache(out):
    for attribute in ("cache", "past_key_values"):
        value = getattr(out, attribute, None)
        if value is not None:
            return value
    raise HookError("the model returned no key/value cache; prefix reuse needs a causal LM with caching")


def _input_device(hf_model) -> torch.device:
    """Where input ids go: the embedding's execution device (accelerate) or its weight's device."""
    embedding = hf_model.get_input_embeddings()
    hook = getattr(embedding, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(execution if not isinstance(execution, int) else f"cuda:{execution}")
    device = embedding.weight.device
    return torch.device("cpu") if device.type == "meta" else device


def wrap(hf_model, tokenizer, info: ModelInfo | None = None) -> HookedModel:
    """A HookedModel over a model the caller owns; `close()` (or `with`) restores it exactly.

    The model keeps its mode (train stays train), device, dtype and attention implementation
    as far as the caller can observe; gradients flow through captures and interventions
    (`forward(..., grad=True)`).
    """
    return HookedModel(hf_model, tokenizer, info)
