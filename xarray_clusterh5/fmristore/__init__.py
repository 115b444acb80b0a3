"""fmristore clustered experiments: layout, h5py reader and writer, xarray views."""
