"""The sweep's plain parts: search space, trial layer sets, resources, Pareto front,
teacher-output cache, and the refusals that happen before Ray starts."""

from pathlib import Path

import pytest
import torch
from conftest import free_port

from orchestrator.config import ConfigError, load_config
from orchestrator.evaluate.tradeoff import pareto_front, plot_tradeoff


def cfg_with(*sets):
    return load_config(Path(__file__).resolve().parents[1] / "configs/mini.yaml", list(sets))


def test_grid_space_of_ratios_scorers_and_strategies():
    from orchestrator.pipeline.stages import plan_keys
    from orchestrator.sweep.space import param_space

    c = cfg_with("prune.ratio=[0.25, 0.5, 0.5]", "prune.scorer=[wli, angular]", "prune.strategy=[lowest, contiguous]")
    space = param_space(c, 8)
    assert space["n_drop"] == {"grid_search": [2, 4]}  # duplicate ratios give one count
    assert space["scorer"] == {"grid_search": ["wli", "angular"]}
    assert len(plan_keys(c, 8)) == 2 * 2 * 2


def test_one_prune_value_is_a_one_element_list_and_the_sweep_reads_prune():
    from orchestrator.pipeline.stages import plan_keys
    from orchestrator.sweep.space import param_space

    c = cfg_with("prune.ratio=0.5", "prune.scorer=block_influence", "prune.strategy=contiguous")
    assert (c.prune.ratio, c.prune.scorer, c.prune.strategy) == ([0.5], ["block_influence"], ["contiguous"])
    assert plan_keys(c, 8) == [("block_influence", "contiguous", 4)]
    assert param_space(c, 8)["strategy"] == {"grid_search": ["contiguous"]}


@pytest.mark.parametrize("field", ["ratio", "scorer", "strategy"])
def test_the_old_sweep_lists_are_refused_pointing_at_prune(field):
    with pytest.raises(ConfigError, match=f"sweep.{field} moved to prune.{field}"):
        cfg_with(f"sweep.{field}=[wli]")


def test_optuna_space_covers_every_depth_in_the_ratio_range():
    from orchestrator.pipeline.stages import drop_counts
    from orchestrator.sweep.space import param_space

    c = cfg_with("sweep.search=optuna", "prune.ratio=[0.25, 0.75]")
    assert drop_counts(c, 8) == [2, 3, 4, 5, 6]
    space = param_space(c, 8)
    assert set(space["n_drop"].categories) == {2, 3, 4, 5, 6}


def test_blocks_grid_lists_every_contiguous_block():
    from orchestrator.sweep.space import param_space

    c = cfg_with("sweep.space=blocks", "prune.ratio=[0.5]")
    sets = param_space(c, 6)["layer_set"]["grid_search"]
    assert sets == ["0-1-2", "1-2-3", "2-3-4", "3-4-5"]
    optuna = param_space(cfg_with("sweep.space=blocks", "sweep.search=optuna", "prune.ratio=[0.3, 0.5]"), 6)
    assert optuna["layer_set"].categories == ["0-1", "1-2", "2-3", "3-4", "4-5", "0-1-2", "1-2-3", "2-3-4", "3-4-5"]


def test_trial_plan_decodes_each_kind_of_trial():
    from orchestrator.pipeline.stages import Plan
    from orchestrator.sweep.space import trial_plan

    plans = [Plan("wli/lowest/2", (3, 5), "wli", "lowest"), Plan("best/lowest/2", (1, 2), "angular", "lowest")]
    assert trial_plan({"n_drop": 2, "scorer": "wli", "strategy": "lowest"}, plans) == plans[0]
    best = trial_plan({"n_drop": 2, "scorer": "best", "strategy": "lowest"}, plans)
    assert best.drop == (1, 2) and best.scorer == "angular"  # the scorer that won, not "best"
    assert trial_plan({"layer_set": "2-1"}, plans) == plans[1]  # a grid trial: the plan of its layer set
    assert trial_plan({"layer_set": "7-2-4"}, plans) == Plan("manual", (2, 4, 7), "manual", "manual")


def test_a_grid_makes_one_student_per_distinct_layer_set():
    from orchestrator.pipeline.stages import Plan, distinct
    from orchestrator.sweep.space import trial_space

    plans = [
        Plan("wli/lowest/2", (3, 5), "wli", "lowest"),
        Plan("angular/lowest/2", (5, 3), "angular", "lowest"),  # the same layers: the same student
        Plan("wli/lowest/3", (3, 5, 6), "wli", "lowest"),
    ]
    students = distinct(plans)
    assert [p.name for p in students] == ["wli/lowest/2", "wli/lowest/3"]  # the first plan of a layer set kept
    space = trial_space(cfg_with("sweep.search=grid"), students, 8)
    assert space == {"layer_set": {"grid_search": ["3-5", "3-5-6"]}}


@pytest.mark.parametrize(
    "sets, message",
    [
        (["sweep.space=layer_sets", "sweep.layer_sets=['2-9']"], "must be in 0..7"),
        (["sweep.space=layer_sets", "sweep.layer_sets=['0-1-2-3-4-5-6-7']"], "would remove all 8"),
        (["sweep.space=layer_sets", "sweep.layer_sets=['2,3']"], "joined by '-'"),
        (["sweep.space=layer_sets"], "layer_sets is empty"),
        (["prune.ratio=[0.01]"], "between 1 and 7"),
        (["prune.scorer=[wlii]"], "allowed values"),
        (["sweep.search=optuna", "sweep.scheduler=asha"], "multi-objective"),
    ],
)
def test_bad_sweeps_are_refused_with_what_to_change(sets, message):
    from orchestrator.sweep.space import param_space

    with pytest.raises(ConfigError, match=message):
        param_space(cfg_with(*sets), 8)


def test_trials_are_sized_from_the_cluster_and_oversized_trials_refused():
    from orchestrator.pipeline.preflight import concurrent_trials

    c = cfg_with("train.num_workers=2", "train.cpus_per_worker=1", "train.driver_cpus=0.5")
    assert concurrent_trials(c, {"CPU": 8}) == 2  # 8 // (0.5 driver + 0.25 data + 2 workers)
    assert concurrent_trials(c, {"CPU": 8.25}) == 3
    assert concurrent_trials(cfg_with("train.num_workers=2", "sweep.max_concurrent_trials=1"), {"CPU": 8}) == 1
    with pytest.raises(ConfigError, match="train.num_workers=4: one trial needs 4.75 CPU"):
        concurrent_trials(cfg_with("train.num_workers=4"), {"CPU": 4})
    with pytest.raises(ConfigError, match="GPU"):
        concurrent_trials(cfg_with("train.use_gpu=true"), {"CPU": 16})


def test_unreachable_ray_address_and_tracking_server_are_refused():
    from orchestrator.pipeline.preflight import check_address, check_tracking

    port = free_port()
    with pytest.raises(ConfigError, match="no Ray cluster answers"):
        check_address(f"127.0.0.1:{port}", timeout=1)
    with pytest.raises(ConfigError, match="MLflow server does not answer"):
        check_tracking(f"http://127.0.0.1:{port}", timeout=1)
    with pytest.raises(ConfigError, match="file stores"):
        check_tracking("file:./mlruns")


def test_tracking_uri_prefers_config_then_environment_then_local_sqlite(monkeypatch, tmp_path):
    from orchestrator.pipeline.preflight import tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking_uri("http://given:5000", tmp_path) == "http://given:5000"
    assert tracking_uri(None, tmp_path) == "http://mlflow:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_a_resumed_trial_does_not_log_the_curve_steps_its_run_already_holds(tmp_path):
    from mlflow import MlflowClient

    from orchestrator import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = tracking.start_run(uri, tracking.experiment_id(uri, "e"), "trial", "trial")
    first = tracking.CurveLogger(uri, run, steps=4)
    for step in (1, 2, 3):  # logged, then the trial dies; its checkpoint was at step 2
        first.add({"train/loss": 10.0 - step, "eval": 1.0}, step)
    first.flush()
    again = tracking.CurveLogger(uri, run, steps=4)
    for step in (3, 4):  # replayed from the checkpoint
        again.add({"train/loss": 10.0 - step}, step)
    again.flush()
    history = MlflowClient(uri).get_metric_history(run, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0)]


def test_a_long_training_curve_is_thinned_to_about_the_points_asked_for(tmp_path):
    from mlflow import MlflowClient

    from orchestrator import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = tracking.start_run(uri, tracking.experiment_id(uri, "e"), "trial", "trial")
    curves = tracking.CurveLogger(uri, run, steps=1001, points=200)  # every 6th step, and the last
    for step in range(1, 1002):
        curves.add({"train/loss": 1.0 / step}, step)
    curves.flush()
    steps = sorted(m.step for m in MlflowClient(uri).get_metric_history(run, "train/loss"))
    assert steps == [*range(6, 1001, 6), 1001] and len(steps) <= 200
    short = tracking.CurveLogger(uri, tracking.start_run(uri, "0", "t", "trial"), steps=50, points=200)
    assert short.every == 1  # a short run keeps every step


def test_pareto_front_keeps_only_undominated_students(tmp_path):
    rows = [
        {"n_layers": 4, "wer": 3.0, "label": "a"},
        {"n_layers": 4, "wer": 2.0, "label": "b"},
        {"n_layers": 6, "wer": 2.5, "label": "c"},
        {"n_layers": 6, "wer": 1.5, "label": "d"},
        {"n_layers": 2, "wer": 40.0, "label": "e"},
    ]
    assert [r["label"] for r in pareto_front(rows)] == ["e", "b", "d"]
    png = plot_tradeoff(rows, {"n_layers": 8, "wer": 1.4}, tmp_path / "p.png")
    assert png.stat().st_size > 5000


def test_teacher_cache_serves_the_teachers_own_outputs(tiny_cfg, tiny_world, random_teacher, tmp_path):
    from orchestrator.distill.data import batches
    from orchestrator.distill.teacher_cache import TeacherCache, build_teacher_cache

    pairs = [tiny_world.train_pairs[i] for i in range(12)]
    d = build_teacher_cache(
        random_teacher, tiny_world.family, pairs, tmp_path / "cache", {"k": 1}, with_hidden=True, batch_size=5
    )
    cache = TeacherCache(d, random_teacher)
    batch = next(batches(tiny_world.family, pairs, 4, seed=3))
    inputs = dict(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True, use_cache=False
    )
    ids = tiny_world.family.speech_ids
    live = random_teacher(**inputs)
    cached = cache.outputs(batch, inputs, ids)
    mask = batch["attention_mask"].bool()
    # the speech ids' logits at the speech positions: what the divergence reads
    expected = live.logits[:, :-1][batch["labels"][:, 1:] != -100][:, ids]
    assert cached.speech_logits.shape == expected.shape
    assert torch.allclose(cached.speech_logits, expected, atol=2e-2, rtol=1e-2)
    for a, b in zip(cached.hidden_states, live.hidden_states, strict=True):
        assert torch.allclose(a[mask], b[mask], atol=2e-2, rtol=1e-2)
    assert (cache.served, cache.live) == (1, 0)
    # the student's own continuations (no pair index) go to the live teacher
    cache.outputs({k: v for k, v in batch.items() if k != "index"}, inputs, ids)
    assert (cache.served, cache.live) == (1, 1)
    # the same key reuses the cache; a new key rebuilds it
    stamp = (d / "logits.npy").stat().st_mtime_ns
    build_teacher_cache(random_teacher, tiny_world.family, pairs, d, {"k": 1}, with_hidden=True)
    assert (d / "logits.npy").stat().st_mtime_ns == stamp
    build_teacher_cache(random_teacher, tiny_world.family, pairs[:8], d, {"k": 2}, with_hidden=False)
    assert not (d / "hidden.npy").exists() and TeacherCache(d, random_teacher).offsets[-1] < cache.offsets[-1]


def test_optuna_search_stays_multi_objective():
    from orchestrator.sweep.runner import _tune_config

    tc = _tune_config(
        cfg_with("sweep.search=optuna", "sweep.num_samples=6", "sweep.objectives=[wer, n_layers, sim]"), 2
    )
    assert tc.metric is None and tc.mode is None  # set on TuneConfig they would make Optuna single-objective
    assert tc.search_alg._metric == ["wer", "n_layers", "sim"] and tc.search_alg._mode == ["min", "min", "max"]
    assert tc.num_samples == 6 and tc.max_concurrent_trials == 2


def test_asha_gets_its_own_metric():
    from orchestrator.sweep.runner import _tune_config

    tc = _tune_config(cfg_with("sweep.scheduler=asha", "sweep.asha_metric=loss", "sweep.asha_grace=3"), 1, reports=37)
    assert tc.metric is None and tc.scheduler._metric == "loss" and tc.scheduler._brackets[0]._rungs[-1][0] == 3
    assert tc.scheduler._max_t == 38  # never at or past the final report (it carries the evaluation)


def test_relative_paths_resolve_under_home_inside_a_ray_job_else_against_the_working_directory(monkeypatch, tmp_path):
    from orchestrator.files import JOB_ENV
    from orchestrator.sweep.runner import resolve_paths

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(JOB_ENV, raising=False)
    cfg = resolve_paths(cfg_with("sweep.storage_path=runs/sweeps", "output_dir=/abs/runs"))
    assert cfg.sweep.storage_path == str(tmp_path / "runs/sweeps") and cfg.output_dir == "/abs/runs"
    monkeypatch.setenv(JOB_ENV, "{}")  # inside `ray job submit`: the working directory is deleted afterwards
    cfg = resolve_paths(cfg_with("sweep.storage_path=runs/sweeps", "output_dir=/abs/runs"))
    assert cfg.sweep.storage_path == str(tmp_path / "home/prun-tts/runs/sweeps") and cfg.output_dir == "/abs/runs"


def test_trial_progress_estimates_time_left_from_this_sessions_pace(monkeypatch, capsys):
    import types

    from orchestrator.sweep import runner

    now = [1000.0]  # the first two reports of a trial resumed at step 300, a minute apart
    monkeypatch.setattr(runner.time, "time", lambda: now[0])
    progress, trial = runner.TrialProgress(720), types.SimpleNamespace(trial_id="t1")
    progress.on_trial_result(0, [], trial, {"step": 320, "loss": 0.5})
    now[0] += 60
    progress.on_trial_result(0, [], trial, {"step": 340, "loss": 0.4})
    first, second = capsys.readouterr().out.splitlines()
    assert first.strip() == "trial t1 step 320/720 loss 0.500"  # no pace yet: not from the checkpoint's step
    assert second.strip() == "trial t1 step 340/720 loss 0.400, about 19.0 min of training left"  # 380 x 3 s


def test_the_console_table_shows_dwer_with_its_paired_interval_in_aligned_columns():
    from orchestrator.pipeline.stages import format_trials

    row = {"dropped_layers": "2-3", "scorer": "wli", "strategy": "lowest", "n_layers": 6, "status": "ok"}
    row.update(wer=2.77, wer_delta=1.24, wer_delta_ci_low=0.52, wer_delta_ci_high=2.04, pruned_wer=21.36)
    row.update(sim=0.917, speedup=1.35)
    lines = format_trials([row], {"n_layers": 8, "wer": 1.52, "sim": 0.921}).splitlines()
    assert "+1.24 [ +0.52,  +2.04]" in lines[3]
    assert len({len(line) for line in lines}) == 1  # every row as wide as the header
    assert [i for i, c in enumerate(lines[0]) if c == "|"] == [i for i, c in enumerate(lines[3]) if c == "|"]
