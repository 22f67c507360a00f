"""Pruning: remove decoder layers (surgery.py), score each layer's importance (importance.py), choose
the layers to drop (select.py), and show the scores (profile.py)."""
