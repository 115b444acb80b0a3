"""CIFTI-2 images in and out (dscalar, pscalar, pconn, dtseries, ptseries)."""
