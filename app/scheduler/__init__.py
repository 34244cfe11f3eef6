"""Placement policy (pure functions) and the dispatch loop that applies it."""
