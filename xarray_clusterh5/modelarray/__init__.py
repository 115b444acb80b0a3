"""ModelArray HDF5: layout, h5py I/O, cohorts and the xarray view."""
