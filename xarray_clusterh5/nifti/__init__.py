"""NIfTI volumes for ModelArray voxel cohorts: fast masked reads, result volumes."""
