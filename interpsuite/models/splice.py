"""Live SAE patching: run prompts with a sparse autoencoder spliced in at one hook point.

`with model.sae_splice(sae, "blocks.6.resid_post") as s:` replaces the activation at that
hook point with the SAE's reconstruction, edits its features (`set_feature`, `scale_feature`,
`add_feature`, `ablate`, `toggle`) and runs prompts, returning the logits, the top-k next tokens and the
feature activations (edited and clean).

Why the error term is kept by default: an SAE reconstructs its input only approximately,
so splicing `decode(encode(x))` alone moves the logits, and an edit's effect would be mixed
with the reconstruction error. With `keep_error=True` the written activation is
`decode(edited) + (x - decode(encode(x)))`, computed as `x + (decode(edited) - decode(clean))`:
exactly `x` (bitwise) when no feature is edited, so any change is the edit's own.

Why a cache: an interactive session patches one prompt many times. Nothing before the hook
point depends on the edits, so the first run of a prompt stores the clean residual stream
entering the spliced layer and the clean features; each later patch starts at that layer
(`HookedModel.forward(start_layer=..., start_resid=...)`) and only recomputes the layers from
the spliced one on. A new prompt replaces the cache.

The SAE is any object with `encode(x) -> [..., width]` and `decode(acts) -> [..., d_in]`,
optionally with `cfg.d_in`, `cfg.width` and `cfg.hook` (the hook point it was trained on);
the core never imports the SAE plugin.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ..errors import ConfigError, HookError
from ..hooks import Intervention, parse_hook_name, unknown_hook_message

if TYPE_CHECKING:
    from .hooked import HookedModel, TokenBatch

#: hook points whose activation has d_model entries per position
_D_MODEL_SITES = ("embed", "final", "resid_pre", "resid_mid", "resid_post", "attn.out", "mlp.out")
_D_MLP_SITES = ("mlp.pre", "mlp.up", "mlp.post")


@dataclass(frozen=True)
class FeatureEdit:
    """One feature's edit: `kind` "set" writes `value` at every position, "scale" multiplies
    the feature's activation by `value`, "add" adds `value` to it (with a linear decoder: the
    steering vector `value * W_dec[feature]` added at every position, input-independent, so the
    one kind a weight edit can express); a disabled edit is kept (for `toggle`) but not applied."""

    feature: int
    kind: Literal["set", "scale", "add"]
    value: float
    enabled: bool = True


@dataclass
class SpliceOutput:
    """What one spliced run gives.

    - `logits`: [batch, vocab] at each row's last real token ([batch, pos, vocab] with
      `all_positions`); encoders: the last hidden state there instead.
    - `clean_logits`: the same without the splice (from the cached clean run).
    - `features`: [batch, pos, width] feature activations at the hook point after the edits;
      `clean_features`: before them (`encode(x)` of the clean activation). Padding positions
      of a right-padded batch are included (their values mean nothing).
    - `top_ids`, `top_probs`, `top_tokens`: the `top_k` most likely next tokens at each row's
      last real token ([batch, k]; empty for encoders).
    """

    logits: torch.Tensor
    clean_logits: torch.Tensor
    features: torch.Tensor
    clean_features: torch.Tensor
    top_ids: torch.Tensor
    top_probs: torch.Tensor
    top_tokens: list[list[str]]
    batch: TokenBatch


@dataclass
class _Clean:
    """The clean run of one batch: what every patch of it reuses."""

    batch: TokenBatch
    texts: tuple[str, ...] | None
    activation: torch.Tensor  # the clean activation at the hook point
    features: torch.Tensor  # encode(activation), [b, pos, width]
    decoded: torch.Tensor  # decode(features), the activation's shape
    start_resid: torch.Tensor | None  # clean resid_pre at the spliced layer (None: no layers skipped)
    logits: torch.Tensor  # model output at the kept positions
    all_positions: bool  # whether `logits` holds every position


class SAESplice:
    """A sparse autoencoder spliced into a HookedModel at one hook point (see the module doc).

    Built by `HookedModel.sae_splice`. Installs nothing on the model: every `run` is one
    ordinary pass with a `map` intervention at the hook point, so `hooks_left()` stays 0.
    Not thread-safe itself (the edits and the cache belong to one session); the model
    underneath may still serve other threads.
    """

    def __init__(
        self,
        model: HookedModel,
        sae: Any,
        hook: str | None = None,
        keep_error: bool = True,
        *,
        allow_other_hook: bool = False,
        reuse_prefix: bool = True,
    ):
        for method in ("encode", "decode"):
            if not callable(getattr(sae, method, None)):
                raise ConfigError(
                    f"the SAE ({type(sae).__name__}) has no {method}() method; give an object with "
                    "encode(x) -> [..., width] and decode(acts) -> [..., d_in]"
                )
        cfg = getattr(sae, "cfg", None)
        trained_on = str(getattr(cfg, "hook", "") or "")
        if hook is None:
            if not trained_on:
                raise ConfigError(
                    "the SAE's cfg.hook is not set, so the hook point is unknown; give hook='blocks.L.site'"
                )
            hook = trained_on
        if hook not in model.sites:
            raise ConfigError(unknown_hook_message(hook, model.sites))
        if trained_on and hook != trained_on and not allow_other_hook:
            raise ConfigError(
                f"the SAE was trained on {trained_on}, not {hook}; splice it at {trained_on} "
                "or pass allow_other_hook=True to use it elsewhere"
            )
        site = model.sites[hook]
        if site.pos_axis != 1 or (site.head_axis is not None and site.head_axis != 2):
            raise ConfigError(
                f"hook point {hook} is not laid out [batch, pos, ...] (attention scores/patterns are "
                "[batch, head, q_pos, k_pos]); splice an SAE at a residual, MLP or attention-output point"
            )
        self.model = model
        self.sae = sae
        self.hook = hook
        self.keep_error = bool(keep_error)
        self.reuse_prefix = bool(reuse_prefix)
        self.d_in: int | None = _positive_int(getattr(cfg, "d_in", None))
        self.width: int | None = _positive_int(getattr(cfg, "width", None))
        expected = _known_width(model, hook)
        if self.d_in is not None and expected is not None and self.d_in != expected:
            raise ConfigError(_d_in_message(self.d_in, hook, expected))
        layer, _ = parse_hook_name(hook)
        #: the layer patched passes start at (0: every pass runs every block)
        self.start_layer = layer if layer is not None and layer > 0 and self.reuse_prefix else 0
        self._edits: dict[int, FeatureEdit] = {}
        self._clean: _Clean | None = None
        self._closed = False
        #: W_dec when decode(acts) is acts @ W_dec + b_dec (checked on the first clean run): an
        #: edit then changes the activation by (edited - clean)[edited features] @ W_dec[those],
        #: a few rows of W_dec instead of a full decode per patch
        self._linear_decoder: torch.Tensor | None = None
        self._decoder_checked = False
        self._last_features: torch.Tensor | None = None

    # --- the with-block -------------------------------------------------------------------
    def __enter__(self) -> SAESplice:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop the cached clean run (activations of the last prompt); the model was never changed."""
        self._clean = None
        self._last_features = None
        self._closed = True

    # --- edits ----------------------------------------------------------------------------
    @property
    def edits(self) -> Mapping[int, FeatureEdit]:
        """The edits by feature index (read-only; change them with the methods)."""
        return types.MappingProxyType(dict(sorted(self._edits.items())))

    def set_feature(self, i: int, value: float) -> SAESplice:
        """Write `value` as feature i's activation at every position."""
        self._edits[self._feature(i)] = FeatureEdit(int(i), "set", _finite(value, f"the value for feature {i}"))
        return self

    def scale_feature(self, i: int, k: float) -> SAESplice:
        """Multiply feature i's activation by `k` at every position."""
        self._edits[self._feature(i)] = FeatureEdit(int(i), "scale", _finite(k, f"the factor for feature {i}"))
        return self

    def add_feature(self, i: int, value: float) -> SAESplice:
        """Add `value` to feature i's activation at every position (steering along its decoder row)."""
        self._edits[self._feature(i)] = FeatureEdit(int(i), "add", _finite(value, f"the value for feature {i}"))
        return self

    def ablate(self, i: int) -> SAESplice:
        """Feature i off everywhere (= set_feature(i, 0))."""
        return self.set_feature(i, 0.0)

    def toggle(self, i: int, on: bool | None = None) -> SAESplice:
        """Switch feature i's edit off (or on again); `on` forces a state."""
        i = self._feature(i)
        if i not in self._edits:
            raise ConfigError(
                f"feature {i} has no edit to toggle; set one first (set_feature, scale_feature, add_feature, ablate)"
            )
        edit = self._edits[i]
        enabled = (not edit.enabled) if on is None else bool(on)
        self._edits[i] = FeatureEdit(edit.feature, edit.kind, edit.value, enabled)
        return self

    def remove(self, i: int) -> SAESplice:
        """Forget feature i's edit (no error if it has none)."""
        self._edits.pop(int(i), None)
        return self

    def clear(self) -> SAESplice:
        """Forget every edit: the splice alone again."""
        self._edits.clear()
        return self

    def _feature(self, i: int) -> int:
        if isinstance(i, bool) or not isinstance(i, (int,)) and not (isinstance(i, torch.Tensor) and i.ndim == 0):
            raise ConfigError(f"feature index must be an int, got {i!r}")
        i = int(i)
        if i < 0 or (self.width is not None and i >= self.width):
            top = "unknown" if self.width is None else self.width - 1
            raise ConfigError(f"feature index {i} out of range: the SAE has features 0..{top}")
        return i

    def _active_edits(self) -> list[FeatureEdit]:
        return [e for _, e in sorted(self._edits.items()) if e.enabled]

    def edited(self, features: torch.Tensor) -> torch.Tensor:
        """`features` ([..., width]) with the enabled edits applied (a new tensor)."""
        active = self._active_edits()
        if not active:
            return features
        out = features.clone()
        for kind in ("set", "scale", "add"):
            chosen = [e for e in active if e.kind == kind]
            if not chosen:
                continue
            index = torch.tensor([e.feature for e in chosen], device=out.device)
            values = torch.tensor([e.value for e in chosen], device=out.device, dtype=out.dtype)
            if kind == "set":
                out[..., index] = values
            elif kind == "scale":
                out[..., index] = out[..., index] * values
            else:
                out[..., index] = out[..., index] + values
        return out

    # --- SAE calls ------------------------------------------------------------------------
    def _sae_place(self) -> tuple[torch.device | None, torch.dtype | None]:
        parameters = getattr(self.sae, "parameters", None)
        if callable(parameters):
            for p in parameters():
                return p.device, p.dtype
        return None, None

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """encode() of an activation, flattening heads ([b, pos, head, d] -> [b, pos, head*d])."""
        flat = x.flatten(2) if x.ndim > 3 else x
        if self.d_in is not None and flat.shape[-1] != self.d_in:
            raise ConfigError(_d_in_message(self.d_in, self.hook, int(flat.shape[-1])))
        device, dtype = self._sae_place()
        features = self.sae.encode(flat.to(device=device or flat.device, dtype=dtype or flat.dtype))
        if not isinstance(features, torch.Tensor) or features.shape[:-1] != flat.shape[:-1]:
            got = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ConfigError(f"the SAE's encode() gave {got} for input {tuple(flat.shape)}; it must give [..., width]")
        width = int(features.shape[-1])
        if self.width is None:
            self.width = width
            self._feature(max(self._edits, default=0))  # edits set before the width was known
        elif width != self.width:
            raise ConfigError(f"the SAE's encode() gave {width} features but its cfg.width is {self.width}")
        return features

    def _decode(self, features: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        out = self.sae.decode(features)
        flat_shape = like.flatten(2).shape if like.ndim > 3 else like.shape
        if not isinstance(out, torch.Tensor) or out.shape != flat_shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"the SAE's decode() gave {got}; it must give the activation's shape {tuple(flat_shape)}")
        return out.to(device=like.device, dtype=like.dtype).reshape(like.shape)

    # --- runs -----------------------------------------------------------------------------
    def run(
        self,
        texts_or_batch: str | Sequence[str] | TokenBatch,
        top_k: int = 10,
        *,
        all_positions: bool = False,
    ) -> SpliceOutput:
        """Run the prompt(s) with the SAE spliced in and the current edits applied.

        The first run of a prompt also runs it clean (cached); later runs of the same prompt
        recompute only the layers from the spliced one on (unless `reuse_prefix=False`).
        """
        if self._closed:
            raise ConfigError("this SAE splice was closed; open a new one with model.sae_splice(...)")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive int, got {top_k!r}")
        clean = self._clean_run(texts_or_batch, all_positions)
        batch = clean.batch
        keep, column = self._kept(batch, all_positions)
        self._last_features = None
        iv = Intervention(self.hook, "map", fn=self._splice)
        if clean.start_resid is not None:
            result = self.model.forward(
                batch,
                interventions=[iv],
                logits_to_keep=keep,
                start_layer=self.start_layer,
                start_resid=clean.start_resid,
            )
        else:
            result = self.model.forward(batch, interventions=[iv], logits_to_keep=keep)
        features = self._last_features
        if features is None:  # pragma: no cover - the pass always reaches the hook point
            raise HookError(f"the pass never reached {self.hook}")
        logits = self._at_last(result.output, batch, column, all_positions)
        clean_logits = self._at_last(clean.logits, batch, column, all_positions)
        top_ids, top_probs, top_tokens = self._top(logits, batch, top_k, all_positions)
        return SpliceOutput(logits, clean_logits, features, clean.features, top_ids, top_probs, top_tokens, batch)

    def _splice(self, x: torch.Tensor) -> torch.Tensor:
        """The `map` function: the activation the pass reached -> the spliced activation."""
        clean = self._clean
        if self.reuse_prefix and clean is not None and _same(x, clean.activation):
            features, decoded = clean.features, clean.decoded
        else:  # a pass from the token ids (reuse_prefix=False) computes everything afresh
            features = self._encode(x)
            decoded = self._decode(features, x)
        edited = self.edited(features)
        self._last_features = edited
        if self.keep_error:
            if edited is features:
                return x
            if self._linear_decoder is not None:
                columns = torch.tensor([e.feature for e in self._active_edits()], device=features.device)
                weights = self._linear_decoder.index_select(0, columns.to(self._linear_decoder.device))
                delta = (edited.index_select(-1, columns) - features.index_select(-1, columns)).to(weights) @ weights
                return x + delta.to(device=x.device, dtype=x.dtype).reshape(x.shape)
            return x + (self._decode(edited, x) - decoded)
        return self._decode(edited, x)

    def _check_decoder(self, features: torch.Tensor, decoded: torch.Tensor) -> None:
        """Use the few-rows update only if decode() is exactly the affine map of the SAE
        interface on real features (an SAE that rescales its output, say, is decoded in full)."""
        self._decoder_checked = True
        w_dec = getattr(self.sae, "W_dec", None)
        if not isinstance(w_dec, torch.Tensor) or w_dec.ndim != 2 or w_dec.shape[0] != features.shape[-1]:
            return
        b_dec = getattr(self.sae, "b_dec", None)
        with torch.no_grad():
            affine = features.to(w_dec) @ w_dec
            if isinstance(b_dec, torch.Tensor):
                affine = affine + b_dec
            flat = decoded.flatten(2) if decoded.ndim > 3 else decoded
            if affine.shape != flat.shape:
                return
            affine = affine.to(decoded).reshape(decoded.shape)
            scale = float(decoded.abs().max().clamp_min(1.0))
            if torch.allclose(affine, decoded, rtol=0, atol=1e-4 * scale):
                self._linear_decoder = w_dec.detach()

    def _clean_run(self, texts_or_batch, all_positions: bool) -> _Clean:
        """The cached clean run of these inputs, computed if the inputs changed."""
        from .hooked import TokenBatch

        texts: tuple[str, ...] | None = None
        if isinstance(texts_or_batch, TokenBatch):
            batch = texts_or_batch
        else:
            texts = (texts_or_batch,) if isinstance(texts_or_batch, str) else tuple(texts_or_batch)
            if not texts or not all(isinstance(t, str) for t in texts):
                raise ConfigError("give the prompt as a string, a list of strings or a TokenBatch")
            cached = self._clean
            if cached is not None and cached.texts == texts and cached.all_positions == all_positions:
                return cached  # the same prompt: not even tokenized again
            batch = self.model.tokenize(list(texts))
        cached = self._clean
        if (
            cached is not None
            and cached.batch.input_ids.shape == batch.input_ids.shape
            and torch.equal(cached.batch.input_ids, batch.input_ids)
            and torch.equal(cached.batch.attention_mask, batch.attention_mask)
            and cached.all_positions == all_positions
        ):
            return cached
        self._clean = None  # a new prompt: free the old one first
        start_name = f"blocks.{self.start_layer}.resid_pre" if self.start_layer > 0 else None
        names = list(dict.fromkeys([self.hook, *([start_name] if start_name else [])]))
        keep, _ = self._kept(batch, all_positions)
        with torch.no_grad():
            result = self.model.forward(batch, capture=names, logits_to_keep=keep)
            activation = result.cache[self.hook]
            features = self._encode(activation)
            decoded = self._decode(features, activation)
            if not self._decoder_checked:
                self._check_decoder(features, decoded)
        start_resid = result.cache[start_name] if start_name is not None else None
        self._clean = _Clean(batch, texts, activation, features, decoded, start_resid, result.output, all_positions)
        return self._clean

    def _kept(self, batch: TokenBatch, all_positions: bool) -> tuple[int | torch.Tensor, torch.Tensor | None]:
        if all_positions or not self.model.info.is_causal:
            return 0, None
        return batch.last_positions()

    @staticmethod
    def _at_last(output: torch.Tensor, batch: TokenBatch, column: torch.Tensor | None, all_positions: bool):
        """Each row's last real token ([batch, ...]); everything with `all_positions`."""
        if all_positions:
            return output
        if column is None:  # an encoder's full hidden state: its last real token per row
            column = batch.last_index
        rows = torch.arange(output.shape[0], device=output.device)
        return output[rows, column.to(output.device)]

    def _top(self, logits, batch, top_k: int, all_positions: bool):
        if not self.model.info.is_causal:
            empty = torch.empty(logits.shape[0], 0)
            return empty.long(), empty, [[] for _ in range(logits.shape[0])]
        last = logits
        if all_positions:
            last = logits[torch.arange(logits.shape[0], device=logits.device), batch.last_index.to(logits.device)]
        probs = torch.softmax(last.float(), dim=-1)
        top_probs, top_ids = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        tokenizer = self.model.tokenizer
        tokens = [
            [tokenizer.convert_tokens_to_string([t]) or t for t in tokenizer.convert_ids_to_tokens(row)]
            for row in top_ids.tolist()
        ]
        return top_ids, top_probs, tokens


def _same(x: torch.Tensor, cached: torch.Tensor) -> bool:
    return x.shape == cached.shape and x.dtype == cached.dtype and x.device == cached.device and torch.equal(x, cached)


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return None
    return value


def _finite(value: Any, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        and not (isinstance(value, torch.Tensor) and value.numel() == 1)
    ):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{what} is {value}, not a finite number; give a finite activation value or factor")
    return value


def _known_width(model: HookedModel, hook: str) -> int | None:
    """The activation width at a hook point from the model's description (None: unknown
    before a pass, checked at the first run)."""
    _, site = parse_hook_name(hook)
    info = model.info
    if site in _D_MODEL_SITES:
        return info.d_model
    if site in _D_MLP_SITES:
        return info.d_mlp
    if site in ("attn.q", "attn.z"):
        return info.n_heads * info.d_head
    return None


def _d_in_message(d_in: int, hook: str, width: int) -> str:
    return (
        f"the SAE's d_in is {d_in} but the activation at {hook} has {width} entries per position; "
        "use an SAE trained on this model's hook point"
    )


__all__ = ["FeatureEdit", "SAESplice", "SpliceOutput"]
