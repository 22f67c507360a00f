"""`prun-tts`: prune | score | distill | evaluate | demo | sweep | report | shards | train-teacher.

Bad input (config, layer sets, paths) exits with code 2 and a message saying
what to change, before any work starts and before anything is written.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from orchestrator.config import ConfigError, load_config
from orchestrator.console import TERMINATED, stop_on_sigterm
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
    # Ctrl-C interrupts even where the parent started us with SIGINT ignored (a background job, some
    # process managers): Python keeps an inherited SIG_IGN, and the run would go on to its end
    signal.signal(signal.SIGINT, signal.default_int_handler)
    stop_on_sigterm()
    if getattr(args, "quiet", False):  # no bars at all, transformers' own (saving, loading) included
        import transformers  # here, not at the top: `prun-tts --help` stays fast

        transformers.utils.logging.disable_progress_bar()
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, LayerSetError) as e:
        print(f"prun-tts {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (console.Terminated)
        print(
            f"\nprun-tts {args.command}: interrupted. {RESUMES.get(args.command, 'Nothing was left half-written.')}",
            file=sys.stderr,
        )
        return 128 + getattr(e, "signum", signal.SIGTERM if TERMINATED.is_set() else signal.SIGINT)


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


# ---------------------------------------------------------------- dispatch
# Each command: its config, the one preflight (every check before any work), then its recipe.
# The recipes are imported when their command runs, not at the top: importing torch, Ray or
# MLflow for every command would make `prun-tts --help` and the refusals slow.


def _checked(args, **given):
    """The command's config and what the preflight resolved (ConfigError: the CLI exits 2)."""
    from orchestrator.pipeline.preflight import preflight

    cfg = load_config(args.config, args.overrides)
    return cfg, preflight(cfg, args.command, **given)


def cmd_prune(args) -> int:
    from orchestrator.recipes.prune import prune_model

    prune_model(args.model, args.out, args.drop, args.keep)
    return 0


def cmd_score(args) -> int:
    from orchestrator.recipes.score import run_score

    cfg, _ = _checked(args)
    run_score(cfg, not args.quiet)
    return 0


def cmd_distill(args) -> int:
    from orchestrator.recipes.distill import run_distill

    cfg, checked = _checked(args, drop=args.drop, keep=args.keep)
    run_distill(cfg, checked.drop, not args.quiet)
    return 0


def cmd_evaluate(args) -> int:
    """Scores go to output_dir/evaluations, named by the model's weights digest and the settings
    (see orchestrator/recipes/evaluate.py): a JSONL row per item as it is scored (a run of the same
    model and settings started again skips the items already there) and a JSON summary at the end."""
    from orchestrator.pipeline.preflight import ray_address
    from orchestrator.recipes.evaluate import evaluate

    address, setting = ray_address(args.address)
    cfg, _ = _checked(args, model=args.model, address=address, address_setting=setting, shards=args.shards)
    evaluate(cfg, args.model, args.split, args.shards, not args.quiet, cluster=lambda: _ray(address, args.quiet))
    return 0


def cmd_shards(args) -> int:
    from orchestrator.distributed.shards import build_shards, plan_shards
    from orchestrator.pipeline.preflight import ray_address

    address, setting = ray_address(args.address)
    cfg, _ = _checked(args, address=address, address_setting=setting)
    plan = plan_shards(cfg)  # a bad manifest or shard folder is refused before Ray starts
    with _ray(address, args.quiet):
        build_shards(cfg, plan)
    return 0


def _ray(address: str | None, quiet: bool):
    from orchestrator.distributed.cluster import ray_cluster

    return ray_cluster(address, log_to_driver=not quiet)


def cmd_demo(args) -> int:
    from orchestrator.recipes.demo import run_demo

    cfg, _ = _checked(args)
    run_demo(cfg, progress=not args.quiet)
    return 0


def cmd_sweep(args) -> int:
    from orchestrator.sweep.runner import run_sweep

    cfg = load_config(args.config, args.overrides)  # run_sweep runs the preflight, on the paths it resolves
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
    from orchestrator.recipes.report import run_report

    page = run_report(args.sweep, args.run, args.tracking_uri, args.out)
    print(f"report: {page.resolve()}")
    return 0


def cmd_train_teacher(args) -> int:
    from orchestrator.recipes.teacher import train_mini_teacher

    cfg, _ = _checked(args, out=args.out)
    command = "prun-tts train-teacher " + " ".join(sys.argv[2:] if args.argv is None else args.argv[1:])
    train_mini_teacher(cfg, args.out, not args.quiet, command)
    return 0


COMMANDS = {
    "prune": cmd_prune,
    "score": cmd_score,
    "distill": cmd_distill,
    "evaluate": cmd_evaluate,
    "demo": cmd_demo,
    "sweep": cmd_sweep,
    "shards": cmd_shards,
    "report": cmd_report,
    "train-teacher": cmd_train_teacher,
}

if __name__ == "__main__":
    sys.exit(main())
