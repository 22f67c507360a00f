"""What a sweep tries: the Tune search space built from the config, and the layers each
trial removes.

Every choice is a scalar (Optuna's categorical choices must be): the number of layers
to remove `n_drop`, a scorer and strategy name, a layer set as a string ("2-3-4-7"),
or a block start.
"""

from __future__ import annotations

from ray import tune

from orchestrator.config import ConfigError, SweepConfig
from orchestrator.prune.surgery import LayerSetError, resolve_keep


def parse_layer_set(text: str) -> list[int]:
    return sorted(int(x) for x in text.split("-"))


def layer_set(drop) -> str:
    return "-".join(map(str, sorted(drop)))


def drop_counts(sw: SweepConfig, n_layers: int) -> list[int]:
    """Layers to remove for each configured ratio (grid) or every count in the ratio range (optuna)."""
    counts = sorted({round(r * n_layers) for r in sw.ratio})
    if sw.search == "optuna":
        counts = list(range(counts[0], counts[-1] + 1))
    bad = [k for k in counts if not 1 <= k < n_layers]
    if bad:
        raise ConfigError(
            f"sweep.ratio={sw.ratio} asks to remove {bad} of {n_layers} layers; "
            f"use ratios that remove between 1 and {n_layers - 1}"
        )
    return counts


def check_layer_sets(sw: SweepConfig, n_layers: int) -> None:
    for text in sw.layer_sets:
        try:
            resolve_keep(n_layers, drop=parse_layer_set(text))
        except LayerSetError as e:
            raise ConfigError(f"sweep.layer_sets: {text!r}: {e}") from None


def blocks(counts: list[int], n_layers: int) -> list[str]:
    return [layer_set(range(s, s + k)) for k in counts for s in range(n_layers - k + 1)]


def param_space(sw: SweepConfig, n_layers: int) -> dict:
    """The Tune `param_space` of a sweep."""
    counts = drop_counts(sw, n_layers)
    grid = sw.search == "grid"
    pick = tune.grid_search if grid else tune.choice
    if sw.space == "layer_sets":
        check_layer_sets(sw, n_layers)
        return {"layer_set": pick(list(sw.layer_sets))}
    if sw.space == "blocks":
        return {"layer_set": pick(blocks(counts, n_layers))}
    return {"n_drop": pick(counts), "scorer": pick(list(sw.scorer)), "strategy": pick(list(sw.strategy))}


def plan_keys(sw: SweepConfig, n_layers: int) -> list[tuple[str, str, int]]:
    """(scorer, strategy, n_drop) combinations whose layer choice the sweep needs before trials start."""
    if sw.space != "selected":
        return []
    return [(s, st, k) for s in sw.scorer for st in sw.strategy for k in drop_counts(sw, n_layers)]


def plan_name(scorer: str, strategy: str, n_drop: int) -> str:
    return f"{scorer}/{strategy}/{n_drop}"


def trial_choice(config: dict, plans: dict[str, list[int]], n_layers: int) -> tuple[list[int], str, str]:
    """The layers a trial removes, and the scorer and strategy that chose them."""
    if "layer_set" in config:
        return parse_layer_set(config["layer_set"]), "manual", "manual"
    return (
        plans[plan_name(config["scorer"], config["strategy"], config["n_drop"])],
        config["scorer"],
        config["strategy"],
    )
