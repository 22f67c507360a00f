"""Ray outside the sweep: speech-token shards with Ray Data, evaluation sharded over Ray tasks."""
