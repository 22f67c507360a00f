"""Speech generation: the families' decoding rules, samplers, and the batched decode paths."""
