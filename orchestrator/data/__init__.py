"""Training data of the real worlds: a manifest of recordings, turned once into speech-token shards."""
