"""Data of the method: the real worlds' training manifest turned once into speech-token shards, and the
Seed-TTS-eval test lists (meta.lst)."""
