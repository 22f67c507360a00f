"""Tiny random speech models behind the real wrappers, built offline in well under a second.

Weights are redrawn with std gain/sqrt(fan_in): at transformers' default init (std 0.02) the tiny
models give the same output for every input, which would make equality tests vacuous.
"""

from __future__ import annotations

import torch
from tiny_tokenizers import char_tokenizer
from transformers import (
    Wav2Vec2FeatureExtractor,
    WavLMConfig,
    WavLMForXVector,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    Xcodec2Config,
    Xcodec2Model,
)

from orchestrator.speech.wavlm import WavLMVerifier
from orchestrator.speech.whisper import WhisperASR
from orchestrator.speech.xcodec2 import Xcodec2Codec

# Whisper's prompt tokens, above a 80-id character vocabulary.
WHISPER_SPECIALS = {
    "<|endoftext|>": 80,
    "<|startoftranscript|>": 81,
    "<|en|>": 82,
    "<|transcribe|>": 83,
    "<|translate|>": 84,
    "<|notimestamps|>": 85,
}


def spread(model: torch.nn.Module, gain: float = 1.0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, gain * p[0].numel() ** -0.5)
    return model.eval()


def tiny_xcodec2_config() -> Xcodec2Config:
    # The real hop (2*2*4*4*5 = 320) and 8 FSQ levels of 4 (65,536 codes) are kept: the acoustic frames
    # must line up with the semantic encoder's 50 Hz features. Everything else is shrunk; the decoder's
    # GroupNorm(32) needs hidden_size a multiple of 32, and quantization_dim = hidden + semantic hidden.
    return Xcodec2Config(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        encoder_hidden_size=2,
        quantization_dim=64,
        semantic_model_config={
            "model_type": "wav2vec2-bert",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "conv_depthwise_kernel_size": 3,
        },
    )


def tiny_xcodec2(seed: int = 0) -> Xcodec2Codec:
    return Xcodec2Codec(spread(Xcodec2Model(tiny_xcodec2_config()), seed=seed), batch_size=4)


def tiny_whisper_model(seed: int = 0, languages: bool = True) -> WhisperForConditionalGeneration:
    cfg = WhisperConfig(
        vocab_size=86,
        num_mel_bins=80,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_target_positions=32,
        decoder_start_token_id=81,
        eos_token_id=80,
        pad_token_id=80,
        bos_token_id=80,
        begin_suppress_tokens=None,
        suppress_tokens=None,
    )
    model = spread(WhisperForConditionalGeneration(cfg), gain=3.0, seed=seed)
    gen = model.generation_config
    gen.max_length = 16  # a random model rarely ends by itself
    if languages:  # as in multilingual checkpoints: language and task become prompt tokens
        gen.lang_to_id = {"<|en|>": 82}
        gen.task_to_id = {"transcribe": 83, "translate": 84}
        gen.no_timestamps_token_id = 85
        gen.is_multilingual = True
        gen._from_model_config = False  # else save/load drops the extra fields, as if derived from config.json
    return model


def tiny_whisper_tokenizer():
    return char_tokenizer(80, WHISPER_SPECIALS, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def tiny_whisper(seed: int = 0, languages: bool = True) -> WhisperASR:
    return WhisperASR(
        tiny_whisper_model(seed, languages), WhisperFeatureExtractor(), tiny_whisper_tokenizer(), batch_size=4
    )


def tiny_wavlm_config() -> WavLMConfig:
    return WavLMConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_kernel=(10, 8, 4),
        conv_stride=(5, 8, 4),
        feat_extract_norm="layer",
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_buckets=32,
        max_bucket_distance=64,
        tdnn_dim=(32, 32, 64),
        tdnn_kernel=(3, 3, 1),
        tdnn_dilation=(1, 2, 1),
        xvector_output_dim=16,
        classifier_proj_size=16,
    )


def tiny_wavlm(seed: int = 0) -> WavLMVerifier:
    return WavLMVerifier(
        spread(WavLMForXVector(tiny_wavlm_config()), seed=seed),
        Wav2Vec2FeatureExtractor(return_attention_mask=True),
        batch_size=4,
    )
