"""A sweep: the pipeline's driver on Ray (runner.py), its Tune search space (space.py), and each
trial as a Ray Train run (trial.py)."""
