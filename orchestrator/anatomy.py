"""Model anatomy: where a Hugging Face decoder keeps its layers, which teacher layers a pruned
model holds, and how many parameters it has. Below prune/ and evaluate/, which both ask.
"""

from __future__ import annotations

from torch import nn


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder's list of layers."""
    n = text_config(model).num_hidden_layers
    for path in ("model.layers", "model.model.layers", "llm.model.model.layers", "layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) == n:
            return obj
    for name, module in model.named_modules():
        if name.endswith("layers") and isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise TypeError(f"{type(model).__name__}: found no ModuleList of {n} decoder layers")


def text_config(model: nn.Module):
    """The decoder's config (the text part of a composite model's)."""
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def kept_layers(model: nn.Module) -> list[int]:
    """Teacher indices of the layers this model holds (all of them for an unpruned model)."""
    cfg = text_config(model)
    info = getattr(cfg, "prun_tts", None) or {}
    return list(info.get("kept_layers", range(cfg.num_hidden_layers)))


def count_parameters(model: nn.Module) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:  # tied embeddings count once
            seen.add(id(p))
            total += p.numel()
    return total
