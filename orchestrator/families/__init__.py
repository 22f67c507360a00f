"""Model families of the real TTS systems: how each lays out text and speech tokens."""
