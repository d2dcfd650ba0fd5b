"""The daemon's composition: lifecycle, the batch loop, and runtime tuning."""
