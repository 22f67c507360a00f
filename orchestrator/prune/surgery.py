"""Remove whole decoder layers from a Hugging Face decoder LM.

Works on any model whose decoder keeps its layers in one `nn.ModuleList` of
`config.num_hidden_layers` entries (`model.model.layers` for Llama / LLaSA and
Qwen2 / CosyVoice 2's LLM). The student is a plain checkpoint: stock
`AutoModelForCausalLM.from_pretrained` loads it, and `config.prun_tts` records
which teacher layers it kept.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from orchestrator.anatomy import decoder_layers, text_config


class LayerSetError(ValueError):
    """A requested layer set that cannot be applied; the message says what to change."""


def resolve_keep(n_layers: int, keep: Iterable[int] | None = None, drop: Iterable[int] | None = None) -> list[int]:
    """Validate a layer set given as kept or dropped indices; return the sorted kept indices."""
    if (keep is None) == (drop is None):
        raise LayerSetError("give exactly one of keep or drop")
    given = list(keep if keep is not None else drop)
    what = "keep" if keep is not None else "drop"
    bad = [i for i in given if not 0 <= int(i) < n_layers]
    if bad:
        raise LayerSetError(
            f"--{what} {bad}: layer indices must be in 0..{n_layers - 1} (the model has {n_layers} layers)"
        )
    dupes = sorted({i for i in given if given.count(i) > 1})
    if dupes:
        raise LayerSetError(f"--{what} lists layer(s) {dupes} more than once")
    kept = sorted(given) if keep is not None else [i for i in range(n_layers) if i not in set(given)]
    if not kept:
        raise LayerSetError(f"--{what} {given} would remove all {n_layers} layers: keep at least one")
    return kept


def drop_layers(model: nn.Module, keep: Sequence[int] | None = None, drop: Sequence[int] | None = None) -> nn.Module:
    """A copy of `model` with only the `keep` layers (or without the `drop` layers), in order."""
    kept = resolve_keep(text_config(model).num_hidden_layers, keep, drop)
    student = copy.deepcopy(model)
    _keep_in_place(student, kept)
    return student


def graft(frame: nn.Module, student: nn.Module) -> nn.Module:
    """A copy of `frame` (the teacher) carrying `student`'s weights: its layers at the teacher
    positions they were cut from (`config.prun_tts`), and its embeddings, norm and head. Cutting
    more layers from the graft (`drop_layers`, teacher indices) starts the next step of pruning in
    steps from the distilled student, not from the teacher's weights."""
    kept = text_config(student).prun_tts["kept_layers"]
    grafted = copy.deepcopy(frame)
    layers, theirs = decoder_layers(grafted), decoder_layers(student)
    for i, layer in zip(kept, theirs):
        layers[i].load_state_dict(layer.state_dict())
    in_layers = {id(p) for p in layers.parameters()}
    own = dict(student.named_parameters())
    with torch.no_grad():
        for name, p in grafted.named_parameters():
            if id(p) not in in_layers:
                p.copy_(own[name])
    return grafted


@contextlib.contextmanager
def layers_removed(model: nn.Module, drop: Sequence[int]) -> Iterator[nn.Module]:
    """`model` itself with the `drop` layers taken out for the duration of the block.

    Scorers use this to try many layer sets on a large model without copying it.
    """
    cfg = text_config(model)
    kept = resolve_keep(cfg.num_hidden_layers, drop=drop)
    layers = decoder_layers(model)
    saved_layers = list(layers)
    saved_cfg = dict(vars(cfg))
    saved_idx = {id(m): m.layer_idx for layer in layers for m in layer.modules() if hasattr(m, "layer_idx")}
    _keep_in_place(model, kept)
    try:
        yield model
    finally:
        _replace_module(model, decoder_layers(model), nn.ModuleList(saved_layers))
        for layer in saved_layers:
            for m in layer.modules():
                if id(m) in saved_idx:
                    m.layer_idx = saved_idx[id(m)]
        for key in set(vars(cfg)) - set(saved_cfg):
            delattr(cfg, key)
        vars(cfg).update(saved_cfg)


def _keep_in_place(model: nn.Module, kept: list[int]) -> None:
    cfg = text_config(model)
    n = cfg.num_hidden_layers
    layers = decoder_layers(model)
    new_layers = nn.ModuleList([layers[i] for i in kept])
    _replace_module(model, layers, new_layers)
    for new_idx, layer in enumerate(new_layers):
        for module in layer.modules():  # the KV cache is indexed by layer_idx
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    for key, value in list(vars(cfg).items()):
        if isinstance(value, (list, tuple)) and len(value) == n and key != "prun_tts":
            setattr(cfg, key, type(value)(value[i] for i in kept))  # per-layer lists: layer_types, ...
    cfg.num_hidden_layers = len(kept)
    previous = getattr(cfg, "prun_tts", None) or {}
    origin = previous.get("kept_layers", list(range(n)))  # always indices of the original teacher
    cfg.prun_tts = {"kept_layers": [origin[i] for i in kept], "teacher_layers": previous.get("teacher_layers", n)}


def _replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for module in root.modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise RuntimeError("decoder layer list not found in the model")


def label(drop: Iterable[int]) -> str:
    """A layer set as text, its one spelling everywhere (tables, MLflow, folders): "2-3-4-7"."""
    return "-".join(map(str, sorted(drop)))


def parse_label(text: str) -> tuple[int, ...]:
    """`label`'s inverse: "7-2-4" -> (2, 4, 7)."""
    return tuple(sorted(int(x) for x in text.split("-")))
