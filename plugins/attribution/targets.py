"""Attribution targets: the scalar whose attribution to input tokens every method explains.

Causal LMs (one scalar per row, at the last real token):
- `target=None`: the logit of the model's top prediction for the unperturbed input;
- `target=" Mary"`: that token's logit (one tokenizer piece; a multi-piece string is refused
  naming the pieces, or its first piece is used with `allow_first_piece=True`, noted in `note`);
- `target=" positive", contrast=" negative"`: the logit difference.

Encoders (BERT, MiniLM) have no LM head: the target is a property of the mean-pooled last hidden
state (real tokens only). With `reference_text` it is the cosine similarity to that text's pooled
embedding; without one (default) it is the L2 norm of the pooled embedding (the similarity of a
text's embedding to itself is the constant 1, which has no gradient, so the norm is used instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from interpsuite.errors import ConfigError


@dataclass
class TargetSpec:
    kind: str  # "logit" | "logit_diff" | "pooled_norm" | "pooled_cosine"
    target_id: int | None = None
    contrast_id: int | None = None
    reference: torch.Tensor | None = None  # [d_model] pooled reference embedding (encoders)
    label: str = ""
    note: str = ""


def pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: [B, T, D], [B, T] -> [B, D]."""
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def target_scalar(output: torch.Tensor, spec: TargetSpec, last_index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One scalar per row. `output`: logits [B, T, V] (causal) or last hidden state [B, T, D] (encoder)."""
    if spec.kind in ("logit", "logit_diff"):
        rows = torch.arange(output.shape[0], device=output.device)
        last = output[rows, last_index]
        value = last[:, spec.target_id]
        if spec.kind == "logit_diff":
            value = value - last[:, spec.contrast_id]
        return value
    emb = pooled(output, mask)
    if spec.kind == "pooled_norm":
        return emb.norm(dim=-1)
    return torch.nn.functional.cosine_similarity(emb, spec.reference.to(emb).unsqueeze(0), dim=-1)


def model_output(model, embeds: torch.Tensor, mask: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
    """Forward from input embeddings: logits (causal) or last hidden state (encoder).

    Attribution methods work on float32 embeddings; a half-precision model gets them cast to
    its own dtype (the cast is differentiable, so gradients still reach the float32 inputs).
    `logits_to_keep` (causal only): the unembedding of only the last that many positions; 0 all."""
    dtype = model.hf_model.get_input_embeddings().weight.dtype
    if not model.info.is_causal:
        return model.hf_model(inputs_embeds=embeds.to(dtype), attention_mask=mask).last_hidden_state
    return model.hf_model(inputs_embeds=embeds.to(dtype), attention_mask=mask, logits_to_keep=logits_to_keep).logits


def resolve_target(
    model,
    input_ids: torch.Tensor,
    target: str | None = None,
    contrast: str | None = None,
    allow_first_piece: bool = False,
    reference_text: str | None = None,
) -> TargetSpec:
    """The TargetSpec for one input (`input_ids`: [1, T] real tokens)."""
    if not model.info.is_causal:
        if target is not None or contrast is not None:
            raise ConfigError(
                f"{model.info.name} is an encoder with no LM head: target/contrast tokens do not apply; "
                "leave them unset (target = pooled-embedding norm) or give reference_text"
            )
        if reference_text is None:
            return TargetSpec("pooled_norm", label="norm of the mean-pooled embedding")
        if not reference_text.strip():
            raise ConfigError("reference_text is empty; give a text or leave it unset")
        batch = model.tokenize([reference_text])
        with torch.no_grad():
            hidden = model.hf_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        ref = pooled(hidden, batch.attention_mask)[0].detach()
        return TargetSpec("pooled_cosine", reference=ref, label=f"cosine to {reference_text!r}")
    notes = []
    if target is None:
        if contrast is not None:
            raise ConfigError("contrast is set but target is not; give both (e.g. ' positive' vs ' negative')")
        with torch.no_grad():
            logits = model.hf_model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits
        tid = int(logits[0, -1].argmax())
        label = f"logit of top prediction {model.tokenizer.decode([tid])!r}"
        return TargetSpec("logit", target_id=tid, label=label)
    tid, note = model.token_id(target, "target", allow_first_piece)
    notes.append(note)
    if contrast is None:
        return TargetSpec("logit", target_id=tid, label=f"logit of {target!r}", note=" ".join(n for n in notes if n))
    cid, note = model.token_id(contrast, "contrast", allow_first_piece)
    notes.append(note)
    if cid == tid:
        raise ConfigError(f"target and contrast are the same token ({target!r}); pick two different tokens")
    return TargetSpec(
        "logit_diff",
        target_id=tid,
        contrast_id=cid,
        label=f"logit({target!r}) - logit({contrast!r})",
        note=" ".join(n for n in notes if n),
    )
