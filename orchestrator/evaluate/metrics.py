"""Quality and cost metrics: WER (Seed-TTS-eval rule), speaker similarity, RTF, memory."""
from __future__ import annotations

import re
import string
import threading
import time

import jiwer
import psutil
import torch

_PUNCT = "".join(c for c in string.punctuation if c != "'")
_PUNCT_RE = re.compile(f"[{re.escape(_PUNCT)}]")


def normalize_text(text: str, lang: str = "en") -> str:
    """Seed-TTS-eval's normalisation: strip punctuation (keep apostrophes), collapse
    spaces, lower-case English."""
    text = _PUNCT_RE.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    return text.lower() if lang == "en" else text


def utterance_wer(reference: str, hypothesis: str, lang: str = "en") -> float:
    ref, hyp = normalize_text(reference, lang), normalize_text(hypothesis, lang)
    if lang == "zh":  # Chinese is scored per character
        ref, hyp = " ".join(ref.replace(" ", "")), " ".join(hyp.replace(" ", ""))
    if not ref:
        raise ValueError("empty reference text: every evaluation item needs a target text")
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

    def __enter__(self) -> "PeakMemory":
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
    def __enter__(self) -> "Stopwatch":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
