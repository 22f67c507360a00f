"""The mini vocoder: codes made audible, deterministically; pitch follows timbre, vowels are
periodic and shaped by their formants, fricatives are noise, the pause is silence."""

import numpy as np
import pytest
import soundfile as sf

from orchestrator.mini.vocoder import HOP, SAMPLE_RATE, VOWEL_FORMANTS, MiniVocoder
from orchestrator.mini.world import MiniWorld, WorldSpec
from orchestrator.speech.audio import save_audio


@pytest.fixture(scope="module")
def world():
    return MiniWorld(WorldSpec(n_sentences=50, dev_sentences=10, test_sentences=10))


def held(world, unit: str, timbre: int, n: int = 10) -> list[int]:
    return [world.units.index(unit) * world.spec.n_timbres + timbre] * n


def f0_of(x: np.ndarray) -> float:
    """The fundamental from the real cepstrum's peak over 60-400 Hz (the formants sit at low
    quefrencies, the pitch period at its own)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) + 1e-9
    cepstrum = np.fft.irfft(np.log(spectrum))
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    return SAMPLE_RATE / (lo + int(np.argmax(cepstrum[lo:hi])))


def flatness(x: np.ndarray) -> float:
    p = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2 + 1e-12
    return float(np.exp(np.mean(np.log(p))) / np.mean(p))


def band_energy(x: np.ndarray, lo: float, hi: float) -> float:
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE)
    return float(p[(f >= lo) & (f < hi)].sum() / p.sum())


def test_a_sentence_is_audible_16_khz_one_hop_per_code_and_deterministic(world, tmp_path):
    v = MiniVocoder(world)
    codes = world.speak(world.test_sentences[0], 0, np.random.default_rng(0)).codes
    a = v.render(codes)
    assert a.dtype == np.float32 and len(a) == HOP * len(codes) == 320 * len(codes)
    assert np.isfinite(a).all() and 0.05 < np.abs(a).max() <= 1.0
    assert np.array_equal(a, v.render(codes))  # bit for bit
    save_audio(tmp_path / "s.wav", a)
    back, rate = sf.read(tmp_path / "s.wav")
    assert rate == 16000 and len(back) == len(a)


def test_the_pause_and_codes_outside_the_codebook_are_silent(world):
    v = MiniVocoder(world)
    assert not v.render(held(world, "|", 2)).any()
    assert not v.render([world.n_codes, -1, world.n_codes + 5]).any()


def test_vowel_pitch_follows_the_timbre(world):
    v = MiniVocoder(world)
    pitches = [f0_of(v.render(held(world, "a", t))[HOP:-HOP]) for t in range(world.spec.n_timbres)]
    assert pitches == pytest.approx(list(v.f0), rel=0.04)
    assert len({round(p) for p in pitches}) == world.spec.n_timbres


def test_vowels_are_periodic_fricatives_noisy_and_vowels_differ_by_formants(world):
    v = MiniVocoder(world)
    a, s = v.render(held(world, "a", 1))[HOP:-HOP], v.render(held(world, "s", 1))[HOP:-HOP]
    assert flatness(s) > 20 * flatness(a)
    i = v.render(held(world, "i", 1))[HOP:-HOP]
    f1_a, f1_i = VOWEL_FORMANTS["a"][0][0], VOWEL_FORMANTS["i"][0][0]
    # "a" has its first formant high (~730 Hz), "i" low (~270 Hz): where their energy lies
    assert band_energy(a, 550, 1000) > 2 * band_energy(i, 550, 1000)
    assert band_energy(i, 150, 400) > 2 * band_energy(a, 150, 400)
    assert f1_a > f1_i


def test_two_speakers_saying_the_same_sentence_sound_different(world):
    v = MiniVocoder(world)
    text = world.test_sentences[1]
    one = v.render(world.speak(text, 0, np.random.default_rng(3)).codes)
    two = v.render(world.speak(text, 1, np.random.default_rng(3)).codes)
    n = min(len(one), len(two))
    assert not np.allclose(one[:n], two[:n])
