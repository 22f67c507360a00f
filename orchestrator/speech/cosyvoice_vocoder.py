"""Speech tokens -> waveform with CosyVoice 2's own flow-matching model and HiFT vocoder.

CosyVoice is not a PyPI package: this needs its repository code importable (`cosyvoice`,
plus `third_party/Matcha-TTS`) and a CosyVoice2-0.5B directory (flow.pt, hift.pt,
campplus.onnx, speech_tokenizer_v2.onnx, cosyvoice2.yaml, and an llm.pt that
CosyVoice2 loads too). Written against CosyVoice 2.0's `CosyVoice2Model.token2wav`;
untested here, where the code is not installed.
"""

from __future__ import annotations

import inspect
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from orchestrator.hub import MissingPiece, require, require_file
from orchestrator.speech.audio import SAMPLE_RATE, as_waveform, resample
from orchestrator.speech.s3tokens import MODEL, S3Tokenizer

INSTALL = "clone https://github.com/FunAudioLLM/CosyVoice and put it (and third_party/Matcha-TTS) on PYTHONPATH"


class CosyVoiceVocoder:
    token_rate = 25.0  # codes per second of audio

    def __init__(self, model_dir: str | Path):
        cli = require("cosyvoice.cli.cosyvoice", INSTALL, "CosyVoice 2 audio (flow matching + HiFT)")
        d = Path(model_dir)
        require_file(
            d / "cosyvoice2.yaml",
            "the CosyVoice 2 model",
            f"download it with `huggingface-cli download FunAudioLLM/CosyVoice2-0.5B --local-dir {d}`",
        )
        self.cosyvoice = cli.CosyVoice2(str(d))
        self.sample_rate = self.cosyvoice.sample_rate  # 24 kHz

    @torch.no_grad()
    def decode(self, codes: Sequence[int], prompt: Any) -> torch.Tensor:
        """Waveform (1-D, `sample_rate`) of `codes` in the voice of `prompt`: what the installed
        CosyVoice's `frontend_zero_shot` takes (a (1, T) 16 kHz tensor in CosyVoice 2.0, a wav
        path in later releases)."""
        cv = self.cosyvoice
        zero_shot = cv.frontend.frontend_zero_shot
        params = list(inspect.signature(zero_shot).parameters)
        if "prompt_speech_16k" in params:  # CosyVoice 2.0: a (1, T) 16 kHz tensor
            prompt = as_waveform(prompt).unsqueeze(0)
        args = ["", "", prompt, cv.sample_rate] + ([""] if "zero_shot_spk_id" in params else [])
        ref = zero_shot(*args)
        model, key = cv.model, str(uuid.uuid1())
        model.hift_cache_dict[key] = None  # the per-utterance state `tts()` would set up
        if hasattr(model, "init_flow_cache"):  # CosyVoice 2.0's cached-flow variant
            model.flow_cache_dict[key] = model.init_flow_cache()
        kwargs = dict(
            token=torch.tensor([list(codes)], dtype=torch.int32),
            prompt_token=ref["flow_prompt_speech_token"],
            prompt_feat=ref["prompt_speech_feat"],
            embedding=ref["flow_embedding"],
            uuid=key,
            finalize=True,
        )
        if "token_offset" in inspect.signature(model.token2wav).parameters:  # releases after 2.0
            kwargs["token_offset"] = 0
        try:
            return model.token2wav(**kwargs).squeeze(0).cpu()
        finally:
            model.hift_cache_dict.pop(key, None)
            getattr(model, "flow_cache_dict", {}).pop(key, None)


class CosyVoiceCodec:
    """The Codec of the cosyvoice2 world: S3 tokens from audio (prompts), and audio from tokens
    through CosyVoice's flow + HiFT, resampled to 16 kHz for the ASR and the verifier. Without
    CosyVoice's code, `decode` gives None: evaluation then reports token-level metrics only."""

    token_rate = 25.0

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        onnx = Path(model_dir) / "speech_tokenizer_v2.onnx"  # the download's copy: no second download
        self.tokenizer = S3Tokenizer.from_pretrained(onnx if onnx.is_file() else MODEL, device)
        try:
            self.vocoder: CosyVoiceVocoder | None = CosyVoiceVocoder(model_dir)
        except MissingPiece as e:
            print(
                f"prun-tts: no CosyVoice audio ({e}); evaluation reports token-level metrics only "
                "(speech tokens, speed, memory; no WER or similarity)",
                file=sys.stderr,
            )
            self.vocoder = None

    def encode(self, audio: Any) -> list[int]:
        return self.tokenizer.encode(audio)

    def decode(self, codes: Sequence[int], prompt: str | None = None) -> torch.Tensor | None:
        if self.vocoder is None:
            return None

        return resample(self.vocoder.decode(codes, prompt), self.vocoder.sample_rate, SAMPLE_RATE)
