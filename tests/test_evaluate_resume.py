"""`prun-tts evaluate` resumes by the model's weights and settings, never by its path."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY_WORLD

import orchestrator.evaluate.synthesis as synthesis
from orchestrator.cli import main
from orchestrator.config import load_config
from orchestrator.files import StateError
from orchestrator.recipes.evaluate import evaluate
from orchestrator.world import save_student

SMALL = ["evaluate.batch_size=2", "evaluate.max_new_tokens=16", "evaluate.passes=1", "device=cpu"]
SCORED = ("name", "target", "hypothesis", "wer", "sim", "n_codes", "codes")  # all but the timings


def scores(rows):
    return [{k: r[k] for k in SCORED} for r in rows]


def sets(tmp_path, out, n_items):
    return (
        TINY_WORLD
        + SMALL
        + [
            f"evaluate.n_items={n_items}",
            f"world.teacher.path={tmp_path / 'no-teacher'}",
            f"output_dir={out}",
        ]
    )


def config(tmp_path, out, n_items):
    return load_config("configs/mini.yaml", sets(tmp_path, out, n_items))


def save_random(cfg, world, path, seed):
    """A random model of the teacher's shape (each seed: other weights)."""
    from transformers import LlamaForCausalLM

    from orchestrator.mini.teacher import teacher_model_config

    torch.manual_seed(seed)
    save_student(world, LlamaForCausalLM(teacher_model_config(cfg, world)).eval(), path)


class Stopped(Exception):
    """The run was stopped (killed, preempted) at this point."""


def count_synthesized(monkeypatch, stop_at=None):
    """Names of the items synthesize is asked for; raise at call `stop_at` (a stopped run)."""
    seen, calls = [], []
    real = synthesis.synthesize

    def counting(model, family, items, *a, **k):
        calls.append(1)
        if stop_at is not None and len(calls) == stop_at:
            raise Stopped
        seen.extend(it.name for it in items)
        return real(model, family, items, *a, **k)

    monkeypatch.setattr(synthesis, "synthesize", counting)
    return seen


def test_another_model_saved_at_the_same_path_is_scored_afresh(tiny_cfg, tiny_world, tmp_path, capsys):
    model = tmp_path / "student"

    def cli(out):
        overrides = sum((["--set", s] for s in sets(tmp_path, out, 4)), [])
        assert main(["evaluate", "--config", "configs/mini.yaml", "--quiet", "--model", str(model), *overrides]) == 0
        printed = capsys.readouterr()
        [where] = re.findall(r"summary written to (\S+)", printed.err)
        return json.loads(printed.out), Path(where)

    save_random(tiny_cfg, tiny_world, model, seed=1)
    a, a_path = cli(tmp_path / "runs")
    shutil.rmtree(model)
    save_random(tiny_cfg, tiny_world, model, seed=2)  # model B, at A's path
    b, b_path = cli(tmp_path / "runs")
    fresh, fresh_path = cli(tmp_path / "clean")  # B alone, nothing to resume

    a_report, b_report, fresh_report = (json.loads(p.read_text()) for p in (a_path, b_path, fresh_path))
    assert scores(b_report["items"]) == scores(fresh_report["items"])
    assert (b["wer"], b["sim"]) == (fresh["wer"], fresh["sim"])
    assert scores(a_report["items"]) != scores(b_report["items"])  # A's rows were never read for B

    out = tmp_path / "runs" / "evaluations"
    assert a_path != b_path and b_path.name == fresh_path.name
    assert sorted(out.glob("student-test-*.json")) == sorted([a_path, b_path])
    assert all(re.fullmatch(r"student-test-[0-9a-f]{12}\.json", p.name) for p in (a_path, b_path))
    assert [len(p.with_suffix(".jsonl").read_text().splitlines()) for p in (a_path, b_path)] == [4, 4]
    assert a_report["model"] == b_report["model"] == str(model.resolve())
    assert a_report["model_digest"] != b_report["model_digest"] == fresh_report["model_digest"]
    assert b_report["split"] == "test" and b_report["settings"]["n_items"] == 4
    assert [r["name"] for r in b_report["items"]] == [it.name for it in tiny_world.test_items[:4]]


def test_a_stopped_run_synthesizes_only_the_missing_items(tiny_cfg, tiny_world, tmp_path, monkeypatch):
    model = tmp_path / "student"
    save_random(tiny_cfg, tiny_world, model, seed=3)
    full, _ = evaluate(config(tmp_path, tmp_path / "clean", 6), str(model), progress=False, echo=False)

    cfg = config(tmp_path, tmp_path / "runs", 6)
    count_synthesized(monkeypatch, stop_at=2)  # stopped during the second of three batches
    with pytest.raises(Stopped):
        evaluate(cfg, str(model), progress=False, echo=False)
    [results] = (tmp_path / "runs" / "evaluations").glob("student-test-*.jsonl")
    assert len(results.read_text().splitlines()) == 2
    assert not list(results.parent.glob("*.json"))  # no summary from a stopped run

    seen = count_synthesized(monkeypatch)
    resumed, summary = evaluate(cfg, str(model), progress=False, echo=False)
    names = [it.name for it in tiny_world.test_items[:6]]
    assert seen == names[2:]  # the first batch was scored: skipped
    assert scores(resumed.items) == scores(full.items) and (resumed.wer, resumed.sim) == (full.wer, full.sim)
    assert summary == results.with_suffix(".json") and summary.is_file()

    seen = count_synthesized(monkeypatch)
    again, _ = evaluate(cfg, str(model), progress=False, echo=False)
    assert seen == [] and scores(again.items) == scores(full.items)  # all scored: nothing synthesized


def test_results_of_another_evaluation_are_refused(tiny_cfg, tiny_world, tmp_path, monkeypatch, capsys):
    cfg = config(tmp_path, tmp_path / "runs", 2)
    paths = {}
    for seed, name in ((4, "a"), (5, "b")):
        save_random(tiny_cfg, tiny_world, tmp_path / name, seed)
        _, summary = evaluate(cfg, str(tmp_path / name), progress=False, echo=False)
        paths[name] = summary.with_suffix(".jsonl")
    a, b = paths["a"], paths["b"]
    a_key, b_key = Path(f"{a}.key"), Path(f"{b}.key")
    b_rows, b_key_text = b.read_text(), b_key.read_text()
    seen = count_synthesized(monkeypatch)

    def refused(message):
        with pytest.raises(StateError, match=re.escape(str(b)) + ".*" + message):
            evaluate(cfg, str(tmp_path / "b"), progress=False, echo=False)

    shutil.copy(a, b)  # A's rows copied over B's: B's key file sealed other bytes
    refused("not the one its key file")
    shutil.copy(a_key, b_key)  # and A's key file too: another key
    refused("belongs to another evaluation")
    b_key.unlink()  # rows with no key file: nothing says what they are
    refused("has no key file")
    b.write_text(b_rows + json.dumps({**json.loads(b_rows.splitlines()[0]), "name": "other-item"}) + "\n")
    b_key.write_text(b_key_text)  # B's own file and key, plus a row of an item not in this list
    refused("items not in this evaluation")
    assert seen == []  # refused before anything was synthesized

    overrides = sum((["--set", s] for s in sets(tmp_path, tmp_path / "runs", 2)), [])
    argv = ["evaluate", "--config", "configs/mini.yaml", "--quiet", "--model", str(tmp_path / "b"), *overrides]
    assert main(argv) == 2 and str(b) in capsys.readouterr().err
    b.write_text(b_rows)  # B's own rows again: resumed, nothing to synthesize
    assert main(argv) == 0 and seen == []


@pytest.mark.integration  # a private Ray
def test_sharded_evaluation_uses_the_same_names_and_checks(tiny_cfg, tiny_world, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    model = tmp_path / "student"
    save_random(tiny_cfg, tiny_world, model, seed=6)
    overrides = sum((["--set", s] for s in sets(tmp_path, tmp_path / "runs", 4)), [])
    argv = ["evaluate", "--config", "configs/mini.yaml", "--quiet", "--model", str(model), *overrides]
    assert main(argv) == 0
    [single] = re.findall(r"summary written to (\S+)", capsys.readouterr().err)
    assert main([*argv, "--shards", "2"]) == 0  # items 0, 2 and 1, 3 in two Ray tasks
    printed = capsys.readouterr()
    assert re.findall(r"summary written to (\S+)", printed.err) == [single]  # one model, one summary name
    stem = single[: -len(".json")]
    shards = [Path(f"{stem}.shard{i}of2.jsonl") for i in range(2)]
    names = [[json.loads(x)["name"] for x in f.read_text().splitlines()] for f in shards]
    assert names == [[it.name for it in tiny_world.test_items[i:4:2]] for i in range(2)]
    assert all(Path(f"{f}.key").is_file() for f in shards)
    report = json.loads(Path(single).read_text())
    assert report["n_shards"] == 2 and [r["name"] for r in report["items"]] == sorted(sum(names, []))
    assert json.loads(printed.out)["wer"] == pytest.approx(sum(r["wer"] for r in report["items"]) / 4)

    Path(f"{shards[1]}.key").unlink()  # refused before any Ray task starts, naming the file
    assert main([*argv, "--shards", "2"]) == 2 and f"{shards[1]} has no key file" in capsys.readouterr().err


def test_workers_parts_of_an_evaluation_are_one_workers_rows(tiny_cfg, tiny_world, random_teacher):
    """Each data-parallel worker synthesizes batches i, i+n, ...; put together they are the rows
    one process makes, item for item (each batch keeps its seed), and so is the student's metrics."""
    from orchestrator.evaluate.synthesis import evaluation_rows, in_list_order, merge_parts
    from orchestrator.pipeline.stages import evaluate_student

    cfg = tiny_cfg.evaluate.model_copy(update={"batch_size": 3, "passes": 2, "max_new_tokens": 12})
    items = tiny_world.test_items[:7]  # 14 rows in 5 batches: parts of 3 and 2 batches
    whole = evaluation_rows(random_teacher, tiny_world, items, cfg)
    parts = [evaluation_rows(random_teacher, tiny_world, items, cfg, part=(i, 2)) for i in range(2)]
    assert [len(p) for p in parts] == [8, 6]
    assert not {r["name"] for r in parts[0]} & {r["name"] for r in parts[1]}
    assert scores(in_list_order(parts[1] + parts[0], items, 2)) == scores(whole)
    three = [evaluation_rows(random_teacher, tiny_world, items, cfg, part=(i, 3)) for i in range(3)]
    assert scores(merge_parts(parts, 3)) == scores(merge_parts(three, 3)) == scores(whole)  # no list needed
    assert len({r["hypothesis"] for r in whole}) > 1  # the rows differ from each other: the order is checked

    full = tiny_cfg.model_copy(update={"evaluate": cfg.model_copy(update={"n_items": 7})})
    baseline = {"wer": 1.0, "sim": 0.5}
    one, one_items = evaluate_student(full, tiny_world, random_teacher, random_teacher, baseline)
    gathered = []  # a stand-in for the gather: worker 1's part, then what rank 0 receives
    assert evaluate_student(full, tiny_world, random_teacher, random_teacher, baseline, (1, 2),
                            lambda rows: gathered.extend(rows)) == (None, None)  # fmt: skip
    two, two_items = evaluate_student(
        full, tiny_world, random_teacher, random_teacher, baseline, (0, 2), lambda rows: rows + gathered
    )
    assert scores(two_items) == scores(one_items)
    assert {k: two[k] for k in ("wer", "sim", "wer_delta", "n_layers")} == {
        k: one[k] for k in ("wer", "sim", "wer_delta", "n_layers")
    }


def test_the_baseline_split_over_workers_is_one_workers(tiny_cfg, random_teacher, tmp_path):
    """The sweep's baseline: the teacher's test batches split over the executor's workers (a
    trial's num_workers on Ray) give the figures and rows of one process."""
    from orchestrator.pipeline.stages import LocalExecutor, TeacherInfo, evaluate_teacher

    class ThreeWorkers(LocalExecutor):
        workers = 3

        def map(self, fn, args):
            self.calls = len(args)
            return super().map(fn, args)

    random_teacher.save_pretrained(tmp_path / "teacher")
    ev = tiny_cfg.evaluate.model_copy(update={"batch_size": 3, "passes": 2, "max_new_tokens": 12, "n_items": 7})
    cfg = tiny_cfg.model_copy(update={"evaluate": ev})
    info = TeacherInfo(str(tmp_path / "teacher"), "random", 4, None)
    split = ThreeWorkers()
    one, three = evaluate_teacher(cfg, info, LocalExecutor()), evaluate_teacher(cfg, info, split)
    assert split.calls == 3 and scores(three["items"]) == scores(one["items"]) and len(one["items"]) == 14
    for k in ("wer", "sim", "n_layers", "params_m", "wer_delta"):
        assert three["metrics"][k] == one["metrics"][k], k
