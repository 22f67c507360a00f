import subprocess
import sys


def test_core_imports_neither_ray_nor_mlflow():
    code = (
        "import sys; import orchestrator.prune.importance, orchestrator.prune.select, orchestrator.distill.loop, "
        "orchestrator.evaluate.synthesis, orchestrator.evaluate.tradeoff, orchestrator.distill.teacher_cache, "
        "orchestrator.recipes.demo, orchestrator.recipes.distill, orchestrator.cli, "
        "orchestrator.real, orchestrator.families.llasa, orchestrator.families.cosyvoice2, orchestrator.data.shards, "
        "orchestrator.data.manifest, orchestrator.evaluate.seedtts, orchestrator.speech.xcodec2, "
        "orchestrator.speech.whisper, "
        "orchestrator.speech.wavlm, orchestrator.speech.cosyvoice_vocoder; "
        "bad = [m for m in ('ray', 'mlflow') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
