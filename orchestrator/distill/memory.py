"""Will a trial fit? Each Train worker's memory for one distillation step, estimated from the
models' shapes before any work (the sweep prints it and refuses a trial its devices cannot hold).

Per worker, in bytes: the frozen teacher (whole on every worker), the student's fp32 weights,
gradients and AdamW state (two fp32 moments), whole under DDP (with its gradient buckets: the
gradients twice) or 1/N of each under FSDP plus what
FSDP gathers whole (the root: embeddings, norm and tied head, from forward to backward; and two
decoder layers, one in use and one prefetched), the activations autograd saves for the backward
(per token and student layer, a Llama block in fp32; `ACTIVATION_FLOATS`), the hidden states the
losses read, and the speech head's logits (one chunk of `losses.CHUNK_ELEMENTS`).
"""

from __future__ import annotations

import dataclasses

from torch import nn

from orchestrator.anatomy import decoder_layers, text_config
from orchestrator.distill.losses import CHUNK_ELEMENTS
from orchestrator.generation.decode import decoder_parts

FP32 = 4
GIB = 2**30


def activation_floats(hidden: int, mlp: int) -> int:
    """Floats a Llama/Qwen2 decoder block saves for backward, per token: the attention norm's
    input and output, q and grouped-query k and v (repeated to every head for attention), the
    attention's output and its projection's input, the MLP norm's input and output, and the MLP's
    gate, up, activated gate and product (the down projection's input). Grouped-query k and v
    count as `hidden` each: they are repeated to the query heads' width before attention."""
    return 9 * hidden + 4 * mlp


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    teacher: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return sum(dataclasses.asdict(self).values())

    def describe(self) -> str:
        parts = ", ".join(f"{k} {v / GIB:.2f}" for k, v in dataclasses.asdict(self).items())
        return f"{self.total / GIB:.2f} GiB per worker ({parts})"


def _bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def estimate_step_memory(
    teacher: nn.Module,
    kept_layers: int,
    strategy: str,
    workers: int,
    tokens: int,
    speech_tokens: int,
    latent: bool = True,
) -> MemoryEstimate:
    """One worker's memory for a distillation step of a student keeping `kept_layers` of
    `teacher`'s layers, under `strategy` ("ddp" | "fsdp") over `workers`; `tokens` per micro-batch
    on this worker, of which `speech_tokens` are speech positions (where the head runs);
    `latent`: the teacher's hidden states are read (the latent term)."""
    layers = decoder_layers(teacher)
    cfg = text_config(teacher)
    layer_params = sum(p.numel() for p in layers[0].parameters())
    in_layers = {id(p) for p in layers.parameters()}
    root_params = sum(p.numel() for p in teacher.parameters() if id(p) not in in_layers)  # tied: counted once
    student = root_params + kept_layers * layer_params
    if strategy == "fsdp":
        share = student / workers
        gathered = root_params + 2 * layer_params  # the root from forward to backward, 2 layers at a time
        weights, gradients, optimizer = FP32 * (share + gathered), FP32 * (share + gathered), 2 * FP32 * share
    else:
        # DDP keeps its gradient buckets beside the gradients (gradient_as_bucket_view is off by
        # default, in Ray Train's prepare_model too): the gradients twice
        weights, gradients, optimizer = FP32 * student, 2 * FP32 * student, 2 * FP32 * student
    hidden, mlp = cfg.hidden_size, cfg.intermediate_size
    saved = tokens * kept_layers * activation_floats(hidden, mlp) * FP32
    # every layer's output (the student's for the latent term; the teacher's, kept without grad)
    states = tokens * hidden * FP32 * ((kept_layers + 1) + ((len(layers) + 1) if latent else 0))
    vocab = decoder_parts(teacher)[2].weight.shape[0]
    chunk = min(speech_tokens * vocab, CHUNK_ELEMENTS)
    logits = 3 * chunk * FP32  # a chunk's logits, their softmax and their gradient
    return MemoryEstimate(_bytes(teacher.parameters()), weights, gradients, optimizer, saved + states, logits)
