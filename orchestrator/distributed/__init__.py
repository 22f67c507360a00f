"""Ray outside the sweep: start or join a cluster, speech-token shards with Ray Data, evaluation
sharded over Ray tasks."""
