"""Compiled kernels for the fast path, built once with torch.utils.cpp_extension."""
