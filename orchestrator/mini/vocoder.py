"""A vocoder for the mini world: codes rendered to 16 kHz audio, only to be listened to (the
report page). The mini ASR and speaker verifier keep working on the codes themselves.

Each code lasts 1/50 s; a run of codes of one unit is one sound. Vowels are voiced (a band-limited sawtooth
source at a pitch set by each code's timbre, shaped by the vowel's formants, scaled by the
timbre as a vocal tract length would), nasals and liquids are low voiced hums, fricatives are
band-shaped noise (voiced ones with a hum under them), plosives a closure then a burst; the
pause between words is silence. Speakers mix timbres differently, so they sound different; a
wrong code is a wrong sound. Deterministic: the same codes give the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from orchestrator.mini.world import MiniWorld

SAMPLE_RATE = 16000
HOP = SAMPLE_RATE // 50  # samples per code: 50 codes per second, like the mini codec's rate
FADE = int(0.005 * SAMPLE_RATE)  # 5 ms raised-cosine edges: no clicks between sounds

# (centre Hz, bandwidth Hz, gain) per formant; textbook adult values (Peterson & Barney)
VOWEL_FORMANTS = {
    "a": ((730, 90, 1.0), (1090, 110, 0.5), (2440, 170, 0.25)),
    "e": ((530, 70, 1.0), (1840, 100, 0.5), (2480, 150, 0.3)),
    "i": ((270, 60, 1.0), (2290, 110, 0.5), (3010, 170, 0.3)),
    "o": ((570, 80, 1.0), (840, 90, 0.6), (2410, 160, 0.2)),
    "u": ((300, 60, 1.0), (870, 90, 0.4), (2240, 160, 0.15)),
}
HUMS = {  # nasals and liquids: voiced, energy low in the spectrum
    "m": ((250, 100, 1.0), (1100, 200, 0.1)),
    "n": ((250, 100, 1.0), (1600, 200, 0.12)),
    "l": ((360, 90, 1.0), (1300, 150, 0.35), (2700, 200, 0.15)),
    "r": ((420, 90, 1.0), (1300, 150, 0.4), (1600, 150, 0.3)),
}
FRICATIVES = {"f": (4500, 3000, False), "v": (4500, 3000, True), "s": (6000, 1600, False), "z": (6000, 1600, True)}
PLOSIVES = {  # burst centre Hz, voiced
    "p": (900, False),
    "b": (900, True),
    "t": (4200, False),
    "d": (4200, True),
    "k": (2200, False),
    "g": (2200, True),
}
LEVELS = {"vowel": 0.25, "hum": 0.12, "fricative": 0.07, "burst": 0.12}  # target RMS of each kind


class MiniVocoder:
    sample_rate = SAMPLE_RATE

    def __init__(self, world: MiniWorld):
        self.world = world
        n = world.spec.n_timbres
        spread = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
        self.f0 = 100.0 + 160.0 * spread  # pitch of each timbre, 100-260 Hz
        self.tract = 1.12 - 0.24 * spread  # formant scale: low voices, longer tracts, lower formants

    def render(self, codes: Sequence[int]) -> np.ndarray:
        """float32 mono audio at 16 kHz, HOP samples per code, within [-1, 1]."""
        codes = [int(c) for c in codes]
        out = np.zeros(len(codes) * HOP, dtype=np.float64)
        for index, (start, stop) in enumerate(_runs([self._unit(c) for c in codes])):
            unit = self._unit(codes[start])
            if unit is None or unit == "|":
                continue  # silence: the pause between words, or a code outside the codebook
            timbres = [self.world.timbre_of(c) for c in codes[start:stop]]
            rng = np.random.default_rng([index, start, stop, *codes[start:stop]])  # noise fixed by the codes
            out[start * HOP : stop * HOP] = _fade(self._sound(unit, timbres, rng))
        peak = np.abs(out).max(initial=0.0)
        return (out / peak * 0.9 if peak > 0.95 else out).astype(np.float32)

    def _unit(self, code: int) -> str | None:
        return self.world.units[self.world.unit_of(code)] if 0 <= code < self.world.n_codes else None

    def _sound(self, unit: str, timbres: list[int], rng: np.random.Generator) -> np.ndarray:
        n = len(timbres) * HOP
        scale = float(np.mean(self.tract[timbres]))
        if unit in VOWEL_FORMANTS:
            return _level(_shape(self._voice(timbres), VOWEL_FORMANTS[unit], scale), "vowel")
        if unit in HUMS:
            return _level(_shape(self._voice(timbres), HUMS[unit], scale), "hum")
        if unit in FRICATIVES:
            centre, width, voiced = FRICATIVES[unit]
            hiss = _level(_shape(rng.standard_normal(n), ((centre * scale, width, 1.0),), 1.0), "fricative")
            return hiss + (0.5 * _level(_shape(self._voice(timbres), HUMS["m"], scale), "hum") if voiced else 0)
        centre, voiced = PLOSIVES[unit]
        closure = min(n // 2, int(0.03 * SAMPLE_RATE))  # a stop: silence (or a voice bar), then the release
        burst = _shape(rng.standard_normal(n - closure), ((centre * scale, 1500, 1.0),), 1.0)
        burst *= np.exp(-np.arange(n - closure) / (0.012 * SAMPLE_RATE))  # the burst dies in ~12 ms
        sound = np.concatenate([np.zeros(closure), _level(burst, "burst")])
        if voiced:
            sound += 0.4 * _level(_shape(self._voice(timbres), HUMS["m"], scale), "hum")
        return sound

    def _voice(self, timbres: list[int]) -> np.ndarray:
        """A glottal source whose pitch follows each code's timbre, gliding between codes: a sawtooth
        built from its harmonics below 7 kHz (a naive sawtooth aliases into a rough, lower buzz)."""
        centres = (np.arange(len(timbres)) + 0.5) * HOP
        f0 = np.interp(np.arange(len(timbres) * HOP), centres, self.f0[timbres])
        phase = 2 * np.pi * np.cumsum(f0 / SAMPLE_RATE)  # continuous across pitch changes
        k = np.arange(1, int(7000 // self.f0.min()) + 1)
        audible = (np.outer(f0, k) < 7000) / k  # 1/k: a sawtooth's spectrum; none above 7 kHz
        return (np.sin(np.outer(phase, k)) * audible).sum(axis=1)


def _runs(units: list) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal units."""
    runs, start = [], 0
    for i in range(1, len(units) + 1):
        if i == len(units) or units[i] != units[start]:
            runs.append((start, i))
            start = i
    return runs


def _shape(source: np.ndarray, formants, scale: float) -> np.ndarray:
    """Filter in the frequency domain by a sum of resonance peaks (centre scaled by the tract)."""
    spectrum = np.fft.rfft(source)
    f = np.fft.rfftfreq(len(source), 1.0 / SAMPLE_RATE)
    envelope = sum(g / (1.0 + ((f - c * scale) / (bw / 2.0)) ** 2) for c, bw, g in formants)
    return np.fft.irfft(spectrum * envelope, n=len(source))


def _level(x: np.ndarray, kind: str) -> np.ndarray:
    rms = np.sqrt(np.mean(x**2)) if len(x) else 0.0
    return x * (LEVELS[kind] / rms) if rms > 0 else x


def _fade(x: np.ndarray) -> np.ndarray:
    k = min(FADE, len(x) // 2)
    if k:
        ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, k))
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x
