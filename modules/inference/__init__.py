"""Inference: Gaussian-weighted sliding windows and test-time mirroring."""
