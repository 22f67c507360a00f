"""The method as a sequence of stages, each owning a fingerprinted state file."""
