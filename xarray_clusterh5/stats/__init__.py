"""Numerics shared by the models: formulas, least squares, p-value corrections.

No xarray, no h5py: NumPy (and formulaic/scipy, from the ``models`` extra).
"""
