"""The real speech wrappers (audio I/O, X-Codec2, Whisper, WavLM) on tiny random models, offline."""

import math

import numpy as np
import pytest
import soundfile as sf
import torch
from tiny_speech import tiny_wavlm, tiny_whisper, tiny_whisper_tokenizer, tiny_xcodec2
from transformers import Wav2Vec2FeatureExtractor, WhisperFeatureExtractor, WhisperProcessor

from orchestrator.hub import MissingPiece
from orchestrator.speech.audio import SAMPLE_RATE, as_waveform, load_audio, save_audio
from orchestrator.speech.wavlm import WavLMVerifier
from orchestrator.speech.whisper import WhisperASR
from orchestrator.speech.xcodec2 import Xcodec2Codec

# Raised inside WavLM's attention when it is given a padding mask; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")


@pytest.fixture(autouse=True)
def one_thread():
    # Convolutions on tiny tensors slow down by 10-100x when two threads compete with other processes
    # for the two cores; one thread keeps each test well under a second.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sine(freq: float, seconds: float, rate: int = SAMPLE_RATE, amp: float = 0.5) -> torch.Tensor:
    return amp * torch.sin(2 * math.pi * freq * torch.arange(int(seconds * rate)) / rate)


def noise(seconds: float, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(int(seconds * SAMPLE_RATE), generator=torch.Generator().manual_seed(seed))


def write_float_wav(path, wav: torch.Tensor, rate: int = SAMPLE_RATE):
    sf.write(str(path), wav.numpy(), rate, subtype="FLOAT")  # lossless, so a path and a tensor agree exactly
    return path


# --- audio ---------------------------------------------------------------------------------------------


def test_load_audio_mixes_down_and_resamples(tmp_path):
    rate = 22050
    left, right = sine(440, 1.5, rate), sine(440, 1.5, rate, amp=0.1)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), torch.stack([left, right], dim=1).numpy(), rate)

    wav = load_audio(path)
    assert wav.dtype == torch.float32 and wav.dim() == 1
    assert abs(len(wav) - 1.5 * SAMPLE_RATE) <= 1
    assert wav.abs().max() == pytest.approx(0.3, abs=0.01)  # the mean of the two channels
    spectrum = torch.fft.rfft(wav).abs()
    assert spectrum.argmax().item() * SAMPLE_RATE / len(wav) == pytest.approx(440, abs=2)


def test_as_waveform_takes_paths_tensors_and_arrays(tmp_path):
    wav = sine(220, 0.5)
    path = write_float_wav(tmp_path / "a.wav", wav)
    assert torch.equal(as_waveform(path), wav)
    assert torch.equal(as_waveform(str(path)), wav)
    assert torch.equal(as_waveform(wav.numpy().astype(np.float64)), wav)
    assert torch.equal(as_waveform(torch.stack([wav, wav])), wav)  # (channels, samples)
    assert len(as_waveform(sine(220, 0.5, 8000), source_rate=8000)) == len(wav)
    with pytest.raises(ValueError, match="1-D waveform"):
        as_waveform(torch.zeros(1, 2, 3))


def test_save_audio_round_trip(tmp_path):
    wav = sine(330, 0.25)
    path = save_audio(tmp_path / "out" / "clip.wav", wav)
    assert torch.allclose(load_audio(path), wav, atol=1e-4)  # 16-bit PCM


def test_missing_audio_file_is_a_missing_piece(tmp_path):
    with pytest.raises(MissingPiece, match="nope.wav does not exist"):
        load_audio(tmp_path / "nope.wav")


# --- X-Codec2 ------------------------------------------------------------------------------------------


def test_xcodec2_encode_gives_50_codes_a_second():
    codec = tiny_xcodec2()
    assert codec.token_rate == 50.0 and codec.sample_rate == 16000 and codec.hop_length == 320
    codes = codec.encode(noise(1.0))
    # Like the original X-Codec2, a clip is padded by 1 to 320 samples before the hop-320 encoder.
    assert len(codes) == 16000 // 320 + 1 == 51
    assert all(isinstance(c, int) and 0 <= c < 65536 for c in codes)
    assert len(set(codes)) > 10  # the tiny model does look at its input
    assert len(codec.encode(noise(0.7))) == 11200 // 320 + 1


def test_xcodec2_decode_gives_a_hop_of_samples_per_code():
    codec = tiny_xcodec2()
    codes = codec.encode(noise(1.0))
    wav = codec.decode(codes)
    assert wav.dim() == 1 and wav.dtype == torch.float32 and len(wav) == len(codes) * 320
    assert torch.isfinite(wav).all()
    assert codec.decode([]).shape == (0,)


def test_xcodec2_batch_equals_one_by_one_for_clips_padded_alike():
    codec = tiny_xcodec2()
    a, b = noise(1.0, seed=1), noise(1.0, seed=2)[:16100]  # different lengths, both 51 codes
    assert codec.encode_batch([a, b]) == [codec.encode(a), codec.encode(b)]


def test_xcodec2_batch_differs_from_one_by_one_only_at_the_end_of_shorter_clips():
    codec = tiny_xcodec2()
    long, short = noise(1.0, seed=1), sine(440, 0.7) + noise(0.7, seed=3)
    batch = codec.encode_batch([short, long, short[:8000]])
    alone = [codec.encode(short), codec.encode(long), codec.encode(short[:8000])]
    assert [len(c) for c in batch] == [len(c) for c in alone] == [36, 51, 26]
    assert batch[1] == alone[1]  # the longest clip sees no padding
    # The acoustic encoder's receptive field reaches about 11 codes into the batch padding.
    for got, want in ((batch[0], alone[0]), (batch[2], alone[2])):
        assert got[:-12] == want[:-12]


def test_xcodec2_path_tensor_and_other_rates_agree(tmp_path):
    codec = tiny_xcodec2()
    wav = noise(0.8)
    path = write_float_wav(tmp_path / "a.wav", wav)
    assert codec.encode(path) == codec.encode(str(path)) == codec.encode(wav)
    assert codec.encode_batch([path, wav]) == [codec.encode(wav)] * 2
    slow = sine(300, 0.8, 8000)
    assert codec.encode(slow, sample_rate=8000) == codec.encode(as_waveform(slow, 16000, source_rate=8000))


def test_xcodec2_from_pretrained_loads_a_saved_checkpoint(tmp_path):
    codec = tiny_xcodec2()
    codec.model.save_pretrained(tmp_path)
    codec.feature_extractor.save_pretrained(tmp_path)
    loaded = Xcodec2Codec.from_pretrained(str(tmp_path))
    wav = noise(0.5)
    assert loaded.encode(wav) == codec.encode(wav)
    assert torch.allclose(loaded.decode([1, 2, 3]), codec.decode([1, 2, 3]))


# --- Whisper -------------------------------------------------------------------------------------------


def test_whisper_transcribes_a_batch_deterministically():
    asr = tiny_whisper()
    assert asr.generate_kwargs == {"language": "en", "task": "transcribe"}
    clips = [noise(1.0), sine(440, 1.5)]
    texts = asr.transcribe(clips)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert texts[0] != texts[1]  # the tiny model does look at its input
    assert asr.transcribe(clips) == texts
    assert [asr.transcribe([c])[0] for c in clips] == texts


def test_whisper_batches_by_batch_size_and_takes_paths(tmp_path):
    asr = tiny_whisper()
    clips = [noise(0.5, seed=s) for s in range(5)] + [sine(440, 1.0)]
    path = write_float_wav(tmp_path / "a.wav", clips[-1])
    texts = asr.transcribe(clips)  # batches of 4 and 2
    assert len(texts) == 6
    assert asr.transcribe([path]) == texts[-1:]
    assert isinstance(asr.transcribe([torch.zeros(0)])[0], str)  # an empty generation still gets a transcript


def test_whisper_without_language_tokens_is_not_given_a_language():
    asr = tiny_whisper(languages=False)  # like a checkpoint whose generation config has no lang_to_id
    assert asr.generate_kwargs == {}
    assert len(asr.transcribe([noise(1.0)])) == 1
    english_only = tiny_whisper()
    english_only.model.generation_config.is_multilingual = False  # like whisper-*.en
    assert WhisperASR(english_only.model, english_only.feature_extractor, english_only.tokenizer).generate_kwargs == {}


def test_whisper_from_pretrained_loads_a_saved_checkpoint(tmp_path):
    asr = tiny_whisper()
    asr.model.save_pretrained(tmp_path)
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tiny_whisper_tokenizer()).save_pretrained(
        tmp_path
    )
    loaded = WhisperASR.from_pretrained(str(tmp_path), batch_size=2)
    clips = [noise(1.0), sine(440, 1.5)]
    assert loaded.generate_kwargs == asr.generate_kwargs
    assert loaded.transcribe(clips) == asr.transcribe(clips)


# --- WavLM ---------------------------------------------------------------------------------------------


def test_wavlm_similarity_is_a_cosine():
    verifier = tiny_wavlm()
    a, b = noise(1.0), sine(440, 1.5)
    assert verifier.similarity(a, a) == pytest.approx(1.0, abs=1e-5)
    ab = verifier.similarity(a, b)
    assert -1.0 <= ab < 0.999
    assert verifier.similarity(b, a) == pytest.approx(ab, abs=1e-6)


def test_wavlm_embed_batches_unit_vectors():
    verifier = tiny_wavlm()
    clips = [noise(1.0), sine(440, 1.5), noise(0.6, seed=4)]
    emb = verifier.embed(clips)
    assert emb.shape == (3, 16) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    alone = torch.cat([verifier.embed([c]) for c in clips])
    # With an attention mask the padding only reaches the shorter clips' last TDNN frames.
    assert torch.allclose((emb * alone).sum(-1), torch.ones(3), atol=1e-3)


def test_wavlm_paths_rates_and_short_clips(tmp_path):
    verifier = tiny_wavlm()
    a, b = noise(1.0), sine(440, 1.5)
    path = write_float_wav(tmp_path / "a.wav", a)
    assert verifier.similarity(path, b) == pytest.approx(verifier.similarity(a, b), abs=1e-6)
    slow_a, slow_b = sine(440, 1.5, 8000), sine(300, 1.0, 8000)
    assert verifier.similarity(slow_a, slow_b, sample_rate=8000) == pytest.approx(
        verifier.similarity(as_waveform(slow_a, 16000, source_rate=8000), as_waveform(slow_b, 16000, source_rate=8000)),
        abs=1e-6,
    )
    assert len(verifier.embed([torch.zeros(0)])) == 1  # padded to the shortest clip the head takes
    assert -1.0 <= verifier.similarity(torch.zeros(10), a) <= 1.0


def test_wavlm_from_pretrained_loads_a_saved_checkpoint(tmp_path):
    verifier = tiny_wavlm()
    verifier.model.save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(tmp_path)
    loaded = WavLMVerifier.from_pretrained(str(tmp_path))
    a, b = noise(1.0), sine(440, 1.5)
    assert loaded.similarity(a, b) == pytest.approx(verifier.similarity(a, b), abs=1e-6)


# --- missing pieces ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "load, setting",
    [
        (lambda name: Xcodec2Codec.from_pretrained(name), "world.real.codec"),
        (lambda name: WhisperASR.from_pretrained(name), "world.real.asr"),
        (lambda name: WavLMVerifier.from_pretrained(name), "world.real.verifier"),
    ],
)
@pytest.mark.parametrize("name", ["/nonexistent/dir", "some-org/not-downloaded"])
def test_missing_checkpoints_say_what_to_download_and_which_setting(monkeypatch, load, setting, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingPiece) as e:
        load(name)
    assert f"huggingface-cli download {name}" in str(e.value) and f"{setting}=DIR" in str(e.value)


def test_an_incomplete_checkpoint_directory_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingPiece, match="exists but is not a complete checkpoint"):
        Xcodec2Codec.from_pretrained(str(tmp_path))
