"""The pipeline: the method's stages (stages.py), sequenced once by the driver (driver.py) for every
way of running them, every check before work (preflight.py), the results folder (results.py)
and a fingerprinted state file per stage (state.py)."""
