"""What a sweep tries: the Tune search space built from the config, and the layers each
trial removes.

Every choice is a scalar (Optuna's categorical choices must be): the number of layers
to remove `n_drop`, a scorer and strategy name, a layer set as a string ("2-3-4-7"),
or a block start.
"""

from __future__ import annotations

from ray import tune

from orchestrator.config import Config, ConfigError
from orchestrator.pipeline.stages import Plan, drop_counts, plan_name
from orchestrator.prune.surgery import LayerSetError, resolve_keep


def parse_layer_set(text: str) -> list[int]:
    return sorted(int(x) for x in text.split("-"))


def layer_set(drop) -> str:
    return "-".join(map(str, sorted(drop)))


def check_layer_sets(cfg: Config, n_layers: int) -> None:
    for text in cfg.sweep.layer_sets:
        try:
            resolve_keep(n_layers, drop=parse_layer_set(text))
        except LayerSetError as e:
            raise ConfigError(f"sweep.layer_sets: {text!r}: {e}") from None


def blocks(counts: list[int], n_layers: int) -> list[str]:
    return [layer_set(range(s, s + k)) for k in counts for s in range(n_layers - k + 1)]


def param_space(cfg: Config, n_layers: int) -> dict:
    """The Tune `param_space` of a sweep."""
    sw = cfg.sweep
    counts = drop_counts(cfg, n_layers)
    pick = tune.grid_search if sw.search == "grid" else tune.choice
    if sw.space == "layer_sets":
        check_layer_sets(cfg, n_layers)
        return {"layer_set": pick(list(sw.layer_sets))}
    if sw.space == "blocks":
        return {"layer_set": pick(blocks(counts, n_layers))}
    p = cfg.prune
    return {"n_drop": pick(counts), "scorer": pick(list(p.scorer)), "strategy": pick(list(p.strategy))}


def trial_plan(config: dict, plans: dict[str, dict]) -> Plan:
    """The layers a trial removes, and the scorer and strategy that chose them."""
    if "layer_set" in config:
        return Plan("manual", tuple(parse_layer_set(config["layer_set"])), "manual", "manual")
    name = plan_name(config["scorer"], config["strategy"], config["n_drop"])
    return Plan(name, tuple(plans[name]["drop"]), plans[name]["scorer"], config["strategy"])
