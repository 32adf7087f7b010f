"""Sweeps: a grid of points expanded from a base config, planned, run by an executor (local
processes or Ray) into one folder, resumably, and shown live."""
