"""What a sweep tries: the Tune search space, and the layers each trial removes.

Every choice is a scalar (Optuna's categorical choices must be). A grid tries one trial per
distinct layer set of the driver's plans (`layer_set`, as "2-3-4-7"); Optuna searches the
declared space: the number of layers to remove `n_drop` with a scorer and strategy name, or a
layer set.
"""

from __future__ import annotations

from ray import tune

from orchestrator.config import Config
from orchestrator.pipeline.preflight import check_layer_sets
from orchestrator.pipeline.stages import Plan, drop_counts, plan_name
from orchestrator.prune.surgery import label, parse_label


def blocks(counts: list[int], n_layers: int) -> list[str]:
    return [label(range(s, s + k)) for k in counts for s in range(n_layers - k + 1)]


def param_space(cfg: Config, n_layers: int) -> dict:
    """The search space the config declares (what Optuna searches; recorded with the sweep's run)."""
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


def trial_space(cfg: Config, plans: list[Plan], n_layers: int) -> dict:
    """The Tune `param_space` of the students: a grid has one trial per distinct layer set of the
    driver's plans (plans that agree on the layers share a student); Optuna searches the declared space."""
    if cfg.sweep.search == "grid":
        return {"layer_set": tune.grid_search([p.label for p in plans])}
    return param_space(cfg, n_layers)


def trial_plan(config: dict, plans: list[Plan]) -> Plan:
    """The plan a trial's config stands for: the first plan with its layer set or its
    scorer/strategy/n_drop name, else (a layer set no plan has) a manual one."""
    if "layer_set" in config:
        drop = parse_label(config["layer_set"])
        return next((p for p in plans if tuple(sorted(p.drop)) == drop), Plan("manual", drop, "manual", "manual"))
    name = plan_name(config["scorer"], config["strategy"], config["n_drop"])
    return next(p for p in plans if p.name == name)
