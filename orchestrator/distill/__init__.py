"""Distillation: the data budget, the engine (prepare a pruned student, train it, resume it, save it),
the training step and its losses, the batches, and the teacher-output cache."""
