"""Relabeling cycles: preference labels on the slice where the reward model fails (docs/relabel.md)."""
