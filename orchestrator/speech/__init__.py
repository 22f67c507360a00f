"""The real speech components behind the world protocols: audio I/O, the X-Codec2 codec, a Whisper ASR
and a WavLM speaker verifier, each a thin wrapper over a transformers model."""
