"""Dependencies point one way. Every module under orchestrator/ is parsed with `ast` (imports
at any level, inside functions too, relative ones resolved), so a lazy import cannot hide:

- the mini world (orchestrator/mini/) is imported only by the few places whose job is to
  pick a world (ALLOWED_MINI_IMPORTERS); the real families and the ML core never import it;
- the ML core (CORE) imports neither Ray nor MLflow, nor the edge modules that do (EDGES);
- importing every module outside the Ray/MLflow homes loads neither `ray` nor `mlflow`;
- the layers (LAYERS) point down: ground floor <- core <- pipeline <- drivers, every module in one;
- no module outside orchestrator/pipeline/ sequences the method's stages: the driver does.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "orchestrator"

MINI = "orchestrator.mini"
# Files outside orchestrator/mini/ that may import it: each picks the mini world on world.name.
ALLOWED_MINI_IMPORTERS = {
    "orchestrator/builders.py": "build_world / teacher_source pick the mini world (or the real one) on world.name",
    "orchestrator/recipes/teacher.py": "`prun-tts train-teacher` trains the mini teacher (world.name=mini only)",
}
# These must never import the mini world, whatever the allow-list says.
NEVER_MINI = (
    "orchestrator/families",
    "orchestrator/real.py",
    "orchestrator/speech",
    "orchestrator/data",
    "orchestrator/evaluate",
    "orchestrator/prune",
    "orchestrator/distill",
    "orchestrator/generation",
)

# The ML core: no Ray, no MLflow, at any level.
CORE = (
    "orchestrator/prune",
    "orchestrator/distill",
    "orchestrator/evaluate",
    "orchestrator/generation",
    "orchestrator/families",
    "orchestrator/speech",
    "orchestrator/data",
    "orchestrator/world.py",
    "orchestrator/batching.py",
    "orchestrator/real.py",
    "orchestrator/mini",
)
RAY_MLFLOW = ("ray", "mlflow")
# Where Ray and MLflow live. The core may not import these either: that would bring them in.
EDGES = ("orchestrator.sweep", "orchestrator.distributed", "orchestrator.tracking", "orchestrator.cli")
# Modules that import Ray or MLflow at their top level: left out of the runtime check.
# (cli.py imports Ray only inside commands, so importing it - `prun-tts --help` - stays light
# and it is checked; orchestrator/pipeline/ is checked too until it is made an edge here.)
RAY_MLFLOW_HOMES = (
    "orchestrator/sweep",
    "orchestrator/distributed",
    "orchestrator/tracking.py",
    "orchestrator/recipes/report.py",  # `prun-tts report --run` reads a sweep's results from MLflow
)

# A module may import its own layer and the ones below it, never one above. Every module of the
# package is in exactly one layer: a new one has to be placed.
LAYERS = {
    "ground floor": ("orchestrator/__init__.py", "orchestrator/config.py", "orchestrator/files.py"),
    "core": (
        *CORE,
        "orchestrator/anatomy.py",
        "orchestrator/builders.py",
        "orchestrator/model_checks.py",
        "orchestrator/hub.py",
        "orchestrator/console.py",
        "orchestrator/assets",
    ),
    "pipeline": ("orchestrator/pipeline",),
    "drivers": (
        "orchestrator/recipes",
        "orchestrator/sweep",
        "orchestrator/report",
        "orchestrator/distributed",
        "orchestrator/tracking.py",
        "orchestrator/cli.py",
    ),
}


def module_name(rel: str) -> tuple[str, bool]:
    """'orchestrator/a/b.py' -> ('orchestrator.a.b', False); '.../__init__.py' -> (package, True)."""
    parts = rel.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imports_of(source: str, module: str, is_package: bool = False) -> list[tuple[int, str, list[str]]]:
    """Every import in `source` (the text of `module`), at any nesting level:
    (line, the statement as written, the absolute module names it may load). `from a import b`
    may load `a` and `a.b` (b could be a submodule); relative imports are resolved against
    `module`; `importlib.import_module("x")` and `__import__("x")` with a literal name count too."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.append((node.lineno, ast.unparse(node), [a.name for a in node.names]))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names if a.name != "*"]
            found.append((node.lineno, ast.unparse(node), names))
        elif isinstance(node, ast.Call) and node.args:
            f = node.func
            fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            arg = node.args[0]
            if (
                fname in ("import_module", "__import__")
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
            ):
                if not arg.value.startswith("."):
                    found.append((node.lineno, ast.unparse(node), [arg.value]))
    return sorted(found, key=lambda t: t[0])


def hits(name: str, targets: tuple[str, ...] | list[str]) -> bool:
    return any(name == t or name.startswith(t + ".") for t in targets)


def violations(source: str, rel: str, targets: tuple[str, ...] | list[str]) -> list[str]:
    """'file:line: statement' for each import in the file at `rel` that loads one of `targets`."""
    module, is_package = module_name(rel)
    return [
        f"{rel}:{line}: {stmt}"
        for line, stmt, names in imports_of(source, module, is_package)
        if any(hits(n, targets) for n in names)
    ]


def under(rel: str, prefixes: tuple[str, ...]) -> bool:
    return any(rel == p or rel.startswith(p + "/") for p in prefixes)


def python_files(root: Path = ROOT) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "orchestrator").rglob("*.py"))


def scan(prefixes: tuple[str, ...], targets: tuple[str, ...], skip=lambda rel: False, root: Path = ROOT) -> list[str]:
    bad = []
    for rel in python_files(root):
        if under(rel, prefixes) and not skip(rel):
            bad += violations((root / rel).read_text(), rel, targets)
    return bad


def mini_violations(root: Path = ROOT) -> list[str]:
    return scan(
        ("orchestrator",),
        (MINI,),
        lambda rel: under(rel, ("orchestrator/mini",)) or rel in ALLOWED_MINI_IMPORTERS,
        root,
    )


def core_violations(root: Path = ROOT) -> list[str]:
    return scan(CORE, (*RAY_MLFLOW, *EDGES), root=root)


# --- the scanner itself -------------------------------------------------------------------


OLD_LLASA = """
from orchestrator.generation.sampling import Sampler
from orchestrator.mini.family import SPECIAL_TOKENS
"""


@pytest.mark.parametrize(
    "source",
    [
        OLD_LLASA,  # what families/llasa.py did before SPECIAL_TOKENS moved there
        "import orchestrator.mini",
        "import orchestrator.mini.family as f",
        "from orchestrator import mini",
        "from orchestrator.mini import build_mini_world",
        "from ..mini.family import SPECIAL_TOKENS",
        "from .. import mini",
        "def f():\n    if True:\n        from orchestrator.mini.teacher import ensure_teacher",
        "class C:\n    def m(self):\n        importlib.import_module('orchestrator.mini.world')",
    ],
)
def test_scanner_finds_mini_imports(source):
    bad = violations(source, "orchestrator/families/llasa.py", (MINI,))
    assert len(bad) == 1 and bad[0].startswith("orchestrator/families/llasa.py:"), bad


@pytest.mark.parametrize(
    "source",
    [
        "import ray",
        "import ray.train.torch",
        "from ray import tune",
        "from mlflow.entities import Metric",
        "def f():\n    import mlflow",
        "x = __import__('ray')",
        "from orchestrator.tracking import Tracker",
        "def f():\n    from orchestrator.sweep.runner import run_sweep",
        "from .. import distributed",
    ],
)
def test_scanner_finds_ray_and_mlflow(source):
    assert violations(source, "orchestrator/evaluate/synthesis.py", (*RAY_MLFLOW, *EDGES))


@pytest.mark.parametrize(
    "source",
    [
        "import raylib",
        "import mlflowish",
        "from orchestrator.minimal import x",
        "from orchestrator import world",
        "from . import llasa",
        "from .mini_helpers import x",
        "s = 'import ray'",
    ],
)
def test_scanner_ignores_lookalikes(source):
    assert violations(source, "orchestrator/families/__init__.py", (*RAY_MLFLOW, MINI, *EDGES)) == []


def test_scanner_resolves_relative_imports():
    line, stmt, names = imports_of("from .family import MiniFamily", "orchestrator.mini", is_package=True)[0]
    assert (line, stmt) == (1, "from .family import MiniFamily")
    assert names == ["orchestrator.mini.family", "orchestrator.mini.family.MiniFamily"]
    assert imports_of("from ..world import Sample", "orchestrator.mini.family")[0][2][0] == "orchestrator.world"


def test_scanner_reports_file_line_and_import():
    bad = violations(OLD_LLASA, "orchestrator/families/llasa.py", (MINI,))
    assert bad == ["orchestrator/families/llasa.py:3: from orchestrator.mini.family import SPECIAL_TOKENS"]


# --- the tree -----------------------------------------------------------------------------


def test_lists_name_real_places():
    files = python_files()
    for rel in (*ALLOWED_MINI_IMPORTERS, *NEVER_MINI, *CORE, *RAY_MLFLOW_HOMES):
        assert any(under(f, (rel,)) for f in files), f"{rel}: no such module or package"
    never = [rel for rel in ALLOWED_MINI_IMPORTERS if under(rel, NEVER_MINI)]
    assert not never, f"allowed to import the mini world but must never: {never}"


def test_only_world_pickers_import_the_mini_world():
    bad = mini_violations()
    assert not bad, (
        "the mini world is imported outside orchestrator/mini/ (dependencies point one way: move what is "
        "shared into the real side, or add a world-picking place to ALLOWED_MINI_IMPORTERS):\n" + "\n".join(bad)
    )


def test_core_imports_neither_ray_nor_mlflow_at_any_level():
    bad = core_violations()
    assert not bad, "the ML core imports Ray, MLflow or an edge module that does:\n" + "\n".join(bad)


def test_importing_the_core_loads_neither_ray_nor_mlflow():
    modules = [module_name(rel)[0] for rel in python_files() if not under(rel, RAY_MLFLOW_HOMES)]
    assert "orchestrator.families.llasa" in modules and "orchestrator.cli" in modules
    assert not any(
        hits(m, ("orchestrator.sweep", "orchestrator.distributed", "orchestrator.tracking")) for m in modules
    )
    # Import one at a time; name the first module after whose import ray or mlflow is loaded.
    code = (
        "import importlib, json, sys\n"
        f"bad = {{}}\nfor m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"    for b in {RAY_MLFLOW!r}:\n"
        "        if b in sys.modules and b not in bad:\n"
        "            bad[b] = m\n"
        "print(json.dumps(bad))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    bad = json.loads(r.stdout.strip().splitlines()[-1])
    assert not bad, "importing the core loads " + ", ".join(f"{b} (first after importing {m})" for b, m in bad.items())


# --- layers and the one driver --------------------------------------------------------------


def as_module(rel: str) -> str:
    return module_name(rel)[0] if rel.endswith(".py") else rel.replace("/", ".")


def layer_of(rel: str) -> str:
    found = [name for name, prefixes in LAYERS.items() if under(rel, prefixes)]
    assert len(found) == 1, f"{rel} is in {found or 'no layer'}: place it in exactly one of LAYERS"
    return found[0]


def test_every_module_is_in_one_layer():
    for rel in python_files():
        layer_of(rel)


def test_layers_point_down():
    names = list(LAYERS)
    bad = []
    for rel in python_files():
        above = [p for name in names[names.index(layer_of(rel)) + 1 :] for p in LAYERS[name]]
        bad += violations((ROOT / rel).read_text(), rel, tuple(as_module(p) for p in above))
    assert not bad, "a module imports from a layer above its own (LAYERS):\n" + "\n".join(bad)


def test_the_layer_scan_finds_an_upward_import():
    above = tuple(as_module(p) for p in (*LAYERS["pipeline"], *LAYERS["drivers"]))
    assert violations("from orchestrator.pipeline.state import cached_stage", "orchestrator/distill/loop.py", above)
    assert violations("def f():\n    from orchestrator.report import page", "orchestrator/prune/profile.py", above)
    assert not violations("from orchestrator.files import atomic_write", "orchestrator/distill/loop.py", above)


def stage_calls(source: str) -> dict[str, set[str]]:
    """function name -> the pipeline stages (`*_stage` functions) it calls."""
    stages = {
        node.name
        for node in ast.walk(ast.parse((PACKAGE / "pipeline" / "stages.py").read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.endswith("_stage")
    }
    found: dict[str, set[str]] = {}
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                    if name in stages:
                        found.setdefault(fn.name, set()).add(name)
    return found


def test_only_the_driver_sequences_the_stages():
    sequencing = {}
    for rel in python_files():
        if not under(rel, ("orchestrator/pipeline",)):
            for fn, called in stage_calls((ROOT / rel).read_text()).items():
                if len(called) >= 4:
                    sequencing[f"{rel}: {fn}"] = sorted(called)
    assert not sequencing, f"the method is sequenced outside pipeline/driver.py: {sequencing}"
    driver = stage_calls((PACKAGE / "pipeline" / "driver.py").read_text())
    assert len(driver["run_pipeline"]) >= 6  # the check would notice a second sequence of them
