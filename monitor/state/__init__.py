"""Checkpoints: what survives a restart or a rebalance, and where it is stored."""
