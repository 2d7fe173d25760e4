"""Noise schedules and sampler steps as pure functions (floats, numpy arrays or torch tensors)."""
