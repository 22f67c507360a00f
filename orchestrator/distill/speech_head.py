"""The output head only where a loss reads it.

A causal LM's forward returns batch x length x vocabulary logits: for LLaSA 193,800 ids at every
position, of which the losses read only the positions whose next label is speech and, for the
divergence from the teacher, only the speech and stop ids (the speech-only head that generation
uses). So the model runs with `logits_to_keep=1` (no full logits), its final normed hidden states
are taken from the decoder body, and the head is applied to those positions alone: for the
teacher's divergence target to the speech-id rows (`speech_logits`), for the student chunk by
chunk (`losses.speech_terms`: the ground-truth loss over the whole vocabulary, its normaliser the
model's own full distribution as before, and the divergence over the speech ids' columns of the
same logits).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.distill.losses import speech_positions
from orchestrator.generation.decode import decoder_parts


@dataclasses.dataclass
class SpeechOutputs:
    """What the distillation losses read from one model on one batch."""

    hidden_states: Sequence[torch.Tensor] | None  # embeddings and every layer's output (B, T, H)
    attentions: Sequence[torch.Tensor] | None
    speech_logits: torch.Tensor | None  # (N, speech ids) at the N speech positions
    final: torch.Tensor | None = None  # (N, H) final normed hidden states at those positions
    head: nn.Linear | None = None  # the model's output head


def head_logits(hidden: torch.Tensor, head: nn.Linear, ids: torch.Tensor) -> torch.Tensor:
    """The head's logits for `ids` only: (..., len(ids)), in the order of `ids`."""
    ids = ids.to(hidden.device)
    return F.linear(hidden, head.weight[ids], None if head.bias is None else head.bias[ids])


def final_hidden(model: nn.Module, inputs: dict) -> tuple[object, torch.Tensor, nn.Linear]:
    """Run `model` (through any DDP wrapper, so gradients still sync) without its full logits:
    (its outputs, the decoder body's final normed hidden states (B, T, H), its output head)."""
    _, body, head = decoder_parts(model)
    seen = {}

    def keep(_module, _args, out) -> None:  # returns None: the output is left as it is
        seen["h"] = out.last_hidden_state

    hook = body.register_forward_hook(keep)
    try:
        out = model(**inputs, logits_to_keep=1)  # the head on one position only, not B x T x vocabulary
    finally:
        hook.remove()
    return out, seen["h"], head


def speech_outputs(
    model: nn.Module,
    inputs: dict,
    labels: torch.Tensor,
    speech_ids: torch.Tensor | None = None,
) -> SpeechOutputs:
    """`model`'s outputs on `inputs` where the losses read them: at the positions whose next label
    is speech (`speech_positions(labels)`), the final hidden states and, given `speech_ids`, the
    logits of those ids (the teacher's side of the divergence)."""
    out, hidden, head = final_hidden(model, inputs)
    at_speech = hidden[:, :-1][speech_positions(labels.to(hidden.device))]
    logits = None if speech_ids is None else head_logits(at_speech, head, speech_ids)
    return SpeechOutputs(out.hidden_states, out.attentions, logits, at_speech, head)
