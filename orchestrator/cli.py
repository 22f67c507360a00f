"""`prun-tts`: prune | score | distill | evaluate | demo | sweep | report | shards | train-teacher.

Bad input (config, layer sets, paths) exits with code 2 and a message saying
what to change, before any work starts and before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from orchestrator.config import Config, ConfigError, load_config
from orchestrator.prune.surgery import LayerSetError


def _layer_list(text: str) -> list[int]:
    try:
        layers = [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give layer indices as comma-separated integers, e.g. 1,3,5"
        ) from None
    if not layers:
        raise argparse.ArgumentTypeError("no layers given: list layer indices, e.g. 1,3,5")
    if any(i < 0 for i in layers):
        raise argparse.ArgumentTypeError(f"{text!r}: layer indices start at 0")
    return layers


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prun-tts", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp):
        sp.add_argument("--config", default=None, help="YAML config (default: built-in defaults = configs/mini.yaml)")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set prune.ratio=0.5 (repeatable)",
        )
        sp.add_argument("--quiet", action="store_true", help="no progress bars")
        sp.add_argument("--verbose", action="store_true", help="Ray's and MLflow's own messages on the terminal")
        return sp

    sp = sub.add_parser("prune", help="remove decoder layers from a model and save the student")
    sp.add_argument("--model", required=True, help="model directory or hub id")
    group = sp.add_mutually_exclusive_group(required=True)
    group.add_argument("--drop", type=_layer_list, help="layer indices to remove, e.g. 1,3")
    group.add_argument("--keep", type=_layer_list, help="layer indices to keep, e.g. 0,2,4")
    sp.add_argument("--out", required=True, help="new directory for the student (must not exist or be empty)")

    with_config(sub.add_parser("score", help="score every layer with the configured scorers; CSV + PNG"))
    sp = with_config(sub.add_parser("distill", help="prune to a layer set and distil it from the teacher"))
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--drop", type=_layer_list, help="layers to remove (default: chosen by prune.scorer)")
    group.add_argument("--keep", type=_layer_list, help="layers to keep")
    sp = with_config(sub.add_parser("evaluate", help="synthesize the test set and score WER, SIM, RTF, memory"))
    sp.add_argument("--model", default=None, help="model directory (default: the teacher)")
    sp.add_argument("--split", choices=["test", "dev"], default="test")
    sp.add_argument("--shards", type=int, default=1, help="split the list over this many Ray tasks (GPUs)")
    sp.add_argument(
        "--address",
        default=None,
        help="Ray cluster HOST:PORT for --shards (default: $RAY_ADDRESS, else a private local Ray)",
    )
    with_config(sub.add_parser("demo", help="the whole method on the configured world, in one process"))
    sp = with_config(
        sub.add_parser("sweep", help="Ray Tune sweep of layer sets, Ray Train distillation per trial, MLflow tracking")
    )
    sp.add_argument(
        "--address",
        default=None,
        help="Ray cluster HOST:PORT (default: $RAY_ADDRESS inside a job, else a private local Ray)",
    )
    sp = with_config(
        sub.add_parser("shards", help="encode world.real.train_manifest into speech-token shards (Ray Data)")
    )
    sp.add_argument("--address", default=None, help="Ray cluster HOST:PORT (default: $RAY_ADDRESS, else local)")
    sp = sub.add_parser("report", help="the listening page of finished sweeps or demos: results, figures, audio")
    sp.add_argument(
        "--sweep", action="append", default=[], metavar="DIR", help="a sweep's or demo's folder (repeatable)"
    )
    sp.add_argument("--run", action="append", default=[], metavar="RUN_ID", help="a sweep's MLflow run (repeatable)")
    sp.add_argument("--tracking-uri", default=None, help="MLflow server for --run (default: $MLFLOW_TRACKING_URI)")
    sp.add_argument("--out", default=None, help="folder for the page (default: DIR/report, or ./report-RUN_ID)")
    sp = with_config(sub.add_parser("train-teacher", help="train the mini world's teacher"))
    sp.add_argument("--out", required=True, help="directory for the teacher")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # the subcommand's own usage and `prun-tts <command>: error:`, not the top level's
        _refuse_unknown(parser, args.command, unknown)
    args.argv = argv
    from orchestrator.console import stop_on_sigterm

    stop_on_sigterm()
    if getattr(args, "quiet", False):  # no bars at all, transformers' own (saving, loading) included
        import transformers

        transformers.utils.logging.disable_progress_bar()
    try:
        if args.command == "prune":
            return cmd_prune(args)
        if args.command == "report":
            return cmd_report(args)
        cfg = load_config(args.config, args.overrides)
        check_inputs(cfg, args)
        return COMMANDS[args.command](cfg, args)
    except (ConfigError, LayerSetError) as e:
        print(f"prun-tts {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (console.Terminated)
        print(
            f"\nprun-tts {args.command}: interrupted. {RESUMES.get(args.command, 'Nothing was left half-written.')}",
            file=sys.stderr,
        )
        return 128 + getattr(e, "signum", signal.SIGINT)


def _refuse_unknown(parser: argparse.ArgumentParser, command: str, unknown: list[str]) -> None:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    hint = ""
    if command == "prune" and any(u.split("=")[0] in ("--config", "--set") for u in unknown):
        hint = "; prune reads no config: give --model, --drop or --keep, and --out"
    sub.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


RESUMES = {  # what the same command does when started again after Ctrl-C
    "sweep": "Run the same command again to resume: finished stages and trials are kept, the trial "
    "in progress continues from its last checkpoint.",
    "demo": "Run the same command again to resume: finished stages are kept, a distillation continues "
    "from its last checkpoint.",
    "distill": "Run the same command again to resume from the last checkpoint.",
    "evaluate": "Run the same command again to resume: the items already scored are kept.",
    "score": "Run the same command again to score again (nothing was kept).",
    "shards": "Run the same command again: finished shards are kept.",
}


def check_inputs(cfg: Config, args) -> None:
    """Paths the user gave, checked before any work: the teacher, --model, --out, output_dir."""
    from orchestrator.model_checks import check_model_dir, check_output_dir, check_tokenizer_dir, check_vocab_size

    if cfg.world.name == "mini":
        from orchestrator.mini.teacher import configured_path

        teacher = configured_path(cfg)
        if teacher.exists():  # a missing mini teacher is trained on first use
            check_model_dir(str(teacher), "world.teacher.path", "mini")
    else:
        check_model_dir(cfg.world.teacher.path, "world.teacher.path", cfg.world.name)
        if cfg.world.name == "llasa":  # the world's family is built from the teacher's tokenizer
            check_tokenizer_dir(cfg.world.teacher.path, "world.teacher.path", "a LLaSA teacher")
        if getattr(args, "command", None) != "shards":  # every other command reads the lists it names
            for key in ("dev_list", "test_list"):
                listed = getattr(cfg.world.real, key)
                if listed and not Path(listed).is_file():
                    raise ConfigError(
                        f"world.real.{key}={listed} does not exist; download the Seed-TTS-eval test sets "
                        f"(https://github.com/BytedanceSpeech/seed-tts-eval) and set world.real.{key} to a meta.lst"
                    )
    if getattr(args, "model", None):
        check_model_dir(args.model, "--model", cfg.world.name)
        if cfg.world.name == "mini":  # the mini family's vocabulary, known without loading anything
            from orchestrator.builders import build_world

            check_vocab_size(args.model, "--model", build_world(cfg).family.vocab_size, "mini")
    if getattr(args, "out", None):
        check_output_dir(args.out, "--out")
    check_output_dir(cfg.output_dir, "output_dir")


def _check_new_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty; choose a new directory or remove it")
    return out


def cmd_prune(args) -> int:
    from transformers import AutoConfig, AutoModelForCausalLM

    from orchestrator.model_checks import check_model_dir, check_output_dir
    from orchestrator.prune.surgery import drop_layers, resolve_keep

    check_output_dir(args.out, "--out")
    check_model_dir(args.model, "--model")
    out = _check_new_dir(args.out)
    if (Path(args.model) / "llm.pt").is_file():
        return _prune_cosyvoice(args, out)
    try:
        mcfg = AutoConfig.from_pretrained(args.model)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"--model {args.model}: cannot read its config ({e}); pass a model directory "
            "or a hub id reachable from here"
        ) from None
    n = mcfg.get_text_config().num_hidden_layers
    resolve_keep(n, args.keep, args.drop)  # refuse a bad set before loading any weights
    model = AutoModelForCausalLM.from_pretrained(args.model)
    student = drop_layers(model, keep=args.keep, drop=args.drop)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prune-", dir=out.parent))
    try:
        student.save_pretrained(tmp)
        _copy_tokenizer(args.model, tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)  # all or nothing
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    kept = student.config.prun_tts["kept_layers"]
    print(f"kept layers {kept} of {n} -> {out}")
    return 0


def _prune_cosyvoice(args, out: Path) -> int:
    """A CosyVoice2-0.5B folder (llm.pt + CosyVoice-BlankEN): the student in the same layout,
    for CosyVoice's own code to load in place of the original LLM."""
    from orchestrator.families.cosyvoice2 import BLANK, load_cosyvoice_llm, save_cosyvoice_llm
    from orchestrator.hub import require_file
    from orchestrator.prune.surgery import drop_layers, resolve_keep

    config = require_file(
        Path(args.model) / BLANK / "config.json",
        "the CosyVoice 2 LLM's config",
        "pass a complete CosyVoice2-0.5B folder",
    )
    n = json.loads(config.read_text())["num_hidden_layers"]
    resolve_keep(n, args.keep, args.drop)  # refuse a bad set before loading any weights
    student = drop_layers(load_cosyvoice_llm(args.model), keep=args.keep, drop=args.drop)
    save_cosyvoice_llm(student, out, source_dir=args.model)
    print(f"kept layers {student.config.prun_tts['kept_layers']} of {n} -> {out} (llm.pt + {BLANK})")
    return 0


def _copy_tokenizer(model: str, out: Path) -> None:
    src = Path(model)
    if src.is_dir():
        for f in src.iterdir():
            if (
                f.name.startswith(("tokenizer", "special_tokens", "chat_template", "prun_tts_"))
                or f.name == "vocab.json"
            ):
                shutil.copy2(f, out / f.name)


def cmd_score(cfg: Config, args) -> int:
    """Every scorer's layer profile, and the layers each (strategy, ratio) of the config removes."""
    from orchestrator.builders import build_world, load_teacher, pick_device, scoring_context, teacher_layers
    from orchestrator.pipeline.stages import drop_counts
    from orchestrator.prune.surgery import decoder_layers
    from orchestrator.recipes.score import format_table, score_all, write_scores

    drop_counts(cfg, teacher_layers(cfg))  # a ratio that removes no layer (or all) is refused before any work
    world = build_world(cfg)
    teacher, _ = load_teacher(cfg, world, pick_device(cfg), not args.quiet)
    n = len(decoder_layers(teacher))
    choices = [(st, k) for st in cfg.prune.strategy for k in drop_counts(cfg, n)]
    for strategy, k in choices:
        ctx = scoring_context(cfg, world, k, not args.quiet)
        results = score_all(teacher, ctx, list(cfg.score.scorers), strategy)
        where = Path(cfg.output_dir) / "scores" / ("" if len(choices) == 1 else f"{strategy}-drop{k}")
        files = write_scores(results, where)
        print(f"{strategy}, removing {k} of {n} layers:\n{format_table(results)}")
        print(f"table: {files['csv']}\nplot: {files['png']}")
    return 0


def cmd_distill(cfg: Config, args) -> int:
    """One student: --drop/--keep, or the one plan prune.* describes (prune.scorer=best included)."""
    from orchestrator.builders import teacher_layers
    from orchestrator.pipeline import stages
    from orchestrator.prune.surgery import resolve_keep
    from orchestrator.recipes.distill import distill

    out = Path(cfg.output_dir).resolve()
    keys = len(cfg.prune.ratio) * len(cfg.prune.scorer) * len(cfg.prune.strategy)
    if args.drop is None and args.keep is None and keys != 1:
        raise ConfigError(
            f"distill makes one student, and prune.* describes {keys} (ratio {cfg.prune.ratio}, scorer "
            f"{cfg.prune.scorer}, strategy {cfg.prune.strategy}); pass --drop/--keep, or one value "
            "each, e.g. --set prune.ratio=0.5 (`prun-tts demo` makes them all)"
        )
    if args.drop is not None or args.keep is not None:  # refuse a bad set before any work
        n = teacher_layers(cfg)
        kept = resolve_keep(n, args.keep, args.drop)
        drop = tuple(i for i in range(n) if i not in kept)
        if not drop:
            raise ConfigError(
                f"--keep {args.keep} keeps all {n} layers, so it would remove none: nothing to prune; "
                f"keep fewer, or --drop the layers to remove"
            )
    else:
        stages.plan_keys(cfg, teacher_layers(cfg))  # prune.ratio removing no layer (or all), before any work
    stages.budget_stage(cfg, stages.teacher_for_checks(cfg))  # refused before the teacher is even trained
    teacher = stages.teacher_stage(cfg, not args.quiet)
    if args.drop is None and args.keep is None:
        plan = next(iter(stages.plans_stage(cfg, teacher, stages.LocalExecutor(), out / "state").values()))
        drop = tuple(plan["drop"])
    world, model = stages.world_and_teacher(cfg, teacher)
    fingerprint = stages.student_fingerprint(cfg, teacher, drop)
    where = stages.student_dir(out / "students", drop, fingerprint)
    distill(cfg, world, model, teacher.train_tokens, drop, where, not args.quiet, fingerprint)
    print(f"student: {where / 'student'} (dropped layers {list(drop)})")
    return 0


def cmd_evaluate(cfg: Config, args) -> int:
    """Scores go to output_dir/evaluations, named by the model's weights digest and the settings
    (see orchestrator/recipes/evaluate.py): a JSONL row per item as it is scored (a run of the same
    model and settings started again skips the items already there) and a JSON summary at the end."""
    from orchestrator.recipes.evaluate import evaluate

    if args.shards > 1:
        _check_cluster(args)  # before any result or key file is written
    evaluate(cfg, args.model, args.split, args.shards, not args.quiet, cluster=lambda: _ray(args))
    return 0


def cmd_shards(cfg: Config, args) -> int:
    from orchestrator.distributed.shards import build_shards, plan_shards

    if cfg.world.name == "mini":
        raise ConfigError(
            "shards encodes a real world's recordings (world.real.train_manifest); the mini world makes its own "
            "training data: set world.name=llasa or world.name=cosyvoice2"
        )
    _check_cluster(args)
    plan = plan_shards(cfg)  # a bad manifest or shard folder is refused before Ray starts
    with _ray(args):
        build_shards(cfg, plan)
    return 0


def _check_cluster(args) -> str | None:
    """The Ray address of --address or $RAY_ADDRESS (None: a private local Ray), refused if nothing answers."""
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        from orchestrator.sweep.runner import check_address

        check_address(address, setting="--address" if args.address else "RAY_ADDRESS")
    return address


@contextlib.contextmanager
def _ray(args):
    """The cluster at --address or $RAY_ADDRESS, else a private local Ray stopped afterwards."""
    import ray

    address = _check_cluster(args)
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address or "local", include_dashboard=False if not address else None, log_to_driver=not args.quiet
        )
        from orchestrator.console import stop_on_sigterm

        stop_on_sigterm()  # Ray's own SIGTERM handler aborts with a stack dump
    try:
        yield
    except ray.exceptions.RayTaskError as e:  # a missing piece met inside a task: its message, not Ray's trace
        if isinstance(e.cause, ConfigError):
            raise e.cause from None
        raise
    finally:
        if started:
            ray.shutdown()


def cmd_demo(cfg: Config, args) -> int:
    from orchestrator.recipes.demo import run_demo

    run_demo(cfg, progress=not args.quiet)
    return 0


def cmd_sweep(cfg: Config, args) -> int:
    from orchestrator.sweep.runner import run_sweep

    result = run_sweep(cfg, args.address, progress=not args.quiet, verbose=args.verbose)
    failed = [r["dropped_layers"] for r in result["rows"] if r["status"] == "error"]
    if failed:
        print(
            f"prun-tts sweep: {len(failed)} trial(s) failed (dropped layers {', '.join(failed)}); "
            "see the trial logs under the sweep's storage path",
            file=sys.stderr,
        )
    return 1 if failed else 0


def cmd_report(args) -> int:
    """The page from results folders (--sweep) and from sweeps' MLflow runs (--run), in that order."""
    from orchestrator import tracking
    from orchestrator.report.page import build_report, check_report_dir
    from orchestrator.report.results import read_results

    if not args.sweep and not args.run:
        raise ConfigError("give --sweep DIR (a finished sweep's or demo's folder) or --run RUN_ID (its MLflow run)")
    uri = tracking.tracking_uri(args.tracking_uri) if args.run else None
    if uri:
        tracking.check_tracking(uri)
    from orchestrator.pipeline.state import durable  # in a Ray job, relative paths are under ~/prun-tts

    folders = [durable(d) for d in args.sweep]
    out = Path(
        durable(args.out or (str(Path(args.sweep[0]) / "report") if args.sweep else f"report-{args.run[0][:8]}"))
    )
    check_report_dir(out)
    with tempfile.TemporaryDirectory(prefix="prun-tts-report-") as downloads:
        sources = [read_results(d) for d in folders]  # all read and verified before anything is written
        for run_id in args.run:
            sources.append(read_results(_run_results(uri, run_id, Path(downloads) / run_id)))
        page = build_report(sources, out)
    print(f"report: {page.resolve()}")
    return 0


def _run_results(uri: str, run_id: str, dest: Path) -> Path:
    from orchestrator import tracking

    try:
        return tracking.download_artifacts(uri, run_id, "results", dest)
    except Exception as e:  # noqa: BLE001 (MLflow raises its own kinds for an unknown run or artifact)
        raise ConfigError(
            f"--run {run_id}: cannot read its results from {uri} ({e.__class__.__name__}: {str(e)[:200]}); "
            "give the id of a finished sweep's run (MLflow UI: the sweep's parent run) and --tracking-uri"
        ) from None


def cmd_train_teacher(cfg: Config, args) -> int:
    from orchestrator.builders import build_world
    from orchestrator.mini.teacher import train_teacher

    if cfg.world.name != "mini":
        raise ConfigError("train-teacher trains the mini world's teacher; set world.name=mini")
    out = _check_new_dir(args.out)
    command = "prun-tts train-teacher " + " ".join(sys.argv[2:] if args.argv is None else args.argv[1:])
    path = train_teacher(cfg, build_world(cfg), out, not args.quiet, command)
    print(f"teacher: {path}")
    return 0


COMMANDS = {
    "score": cmd_score,
    "distill": cmd_distill,
    "evaluate": cmd_evaluate,
    "demo": cmd_demo,
    "sweep": cmd_sweep,
    "shards": cmd_shards,
    "train-teacher": cmd_train_teacher,
}

if __name__ == "__main__":
    sys.exit(main())
