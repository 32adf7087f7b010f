"""Benchmarks: normbench's training path timed against the plain PyTorch loop on the same work."""
