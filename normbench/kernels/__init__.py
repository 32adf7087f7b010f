"""Compiled kernels for the fast path: C++ sources in .cpp files, built by build.py once per binary."""
