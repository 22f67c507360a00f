"""WER equals Seed-TTS-eval's own code on every stored pair.

tests/data/seedtts_wer_reference.json was computed by tests/data/make_seedtts_wer_reference.py,
which execs `punctuation_all` and `process_one` from BytedanceSpeech/seed-tts-eval's run_wer.py
(the commit is named in the file) verbatim with jiwer 3 (the reference's `compute_measures`),
after `run_asr`'s zhconv step on Chinese hypotheses. Our function's output never went into it.
"""

import json
from pathlib import Path

import pytest

from orchestrator.evaluate.metrics import utterance_wer

REFERENCE = json.loads((Path(__file__).parent / "data" / "seedtts_wer_reference.json").read_text(encoding="utf-8"))
CASES = REFERENCE["cases"]


def test_reference_covers_the_tricky_pairs():
    assert REFERENCE["source"]["repo"] == "BytedanceSpeech/seed-tts-eval"
    assert len(REFERENCE["source"]["commit"]) == 40
    assert len(CASES) >= 40
    assert sum(c["lang"] == "zh" for c in CASES) >= 20  # Chinese included, not token cases


@pytest.mark.parametrize("case", [c for c in CASES if "wer" in c], ids=lambda c: c["name"])
def test_utterance_wer_equals_seed_tts_eval(case):
    assert utterance_wer(case["reference"], case["hypothesis"], case["lang"]) == pytest.approx(case["wer"], abs=1e-12)


@pytest.mark.parametrize("case", [c for c in CASES if "error" in c], ids=lambda c: c["name"])
def test_reference_without_words_is_refused(case):
    # the reference raises (jiwer refuses an empty reference); ours says what to change
    assert case["error"].startswith("ValueError")
    with pytest.raises(ValueError, match="empty once punctuation is removed"):
        utterance_wer(case["reference"], case["hypothesis"], case["lang"])
