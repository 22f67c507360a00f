"""Recipes: one readable file per workflow, each a command's body (demo, score, distill, evaluate,
prune, report, train-teacher); the CLI parses and dispatches to them."""
