"""MRtrix image format (``.mif``, ``.mif.gz``): header, reading, writing."""
