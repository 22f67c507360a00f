"""Evaluation: synthesize a list, score WER, SIM, RTF and memory, the speed-up over the teacher,
and the quality-against-depth Pareto front."""
