"""Quality and cost metrics: WER (Seed-TTS-eval's rule), speaker similarity, RTF, memory.

WER follows BytedanceSpeech/seed-tts-eval at commit 752f4297f090c46bb1a55a1f7439e5944ddefe8d
(`run_wer.py`: `punctuation_all`, `process_one`, and `run_asr`'s zhconv step; `average_wer.py`:
the plain mean of per-utterance WERs), pinned against that code's own outputs in
tests/test_wer_reference.py.
"""

from __future__ import annotations

import string
import threading
import time

import jiwer
import psutil
import torch
import zhconv
from zhon.hanzi import punctuation as _HANZI_PUNCTUATION

# Seed-TTS-eval deletes each of these characters except the apostrophe (its `punctuation_all`)
_DELETED = "".join(dict.fromkeys(c for c in _HANZI_PUNCTUATION + string.punctuation if c != "'"))
_DELETE_TABLE = str.maketrans("", "", _DELETED)


def normalize_text(text: str, lang: str = "en") -> str:
    """Seed-TTS-eval's `process_one` normalisation: delete the punctuation, replace double
    spaces once (a single pass, as `str.replace` does), then split Chinese into characters
    joined by spaces (spaces included, as the reference does) or lower-case English."""
    text = text.translate(_DELETE_TABLE).replace("  ", " ")
    if lang == "zh":
        return " ".join(text)
    if lang == "en":
        return text.lower()
    raise ValueError(f"language {lang!r}: Seed-TTS-eval scores 'en' or 'zh'")


def utterance_wer(reference: str, hypothesis: str, lang: str = "en") -> float:
    """One utterance's WER exactly as Seed-TTS-eval computes it: Chinese ASR output is first
    converted to simplified characters (`zhconv.convert(h, "zh-cn")`, the hypothesis only),
    both texts normalised, then jiwer with its default transforms (collapse runs of
    whitespace, strip, split on the space), as `jiwer.compute_measures(truth, hypo)["wer"]`."""
    if lang == "zh":
        hypothesis = zhconv.convert(hypothesis, "zh-cn")
    ref, hyp = normalize_text(reference, lang), normalize_text(hypothesis, lang)
    if not ref.strip():
        raise ValueError(
            f"reference text {reference!r} is empty once punctuation is removed: every evaluation "
            "item needs a target text with words"
        )
    return float(jiwer.wer(ref, hyp))


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak when on a GPU, else process RSS
    sampled every few milliseconds. `model_bytes(model)` is one model's share: its weights
    plus what the block added (KV cache, activations), leaving out whatever else the process
    holds (a teacher beside its student, the codec, the ASR)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes = 0
        self.start_bytes = 0  # what was already held when the block began (other models, ...)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self._stop = threading.Event()
            self._proc = psutil.Process()
            self.peak_bytes = self.start_bytes = self._proc.memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def model_bytes(self, model: torch.nn.Module) -> int:
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        return weights + max(0, self.peak_bytes - self.start_bytes)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_bytes = max(self.peak_bytes, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
