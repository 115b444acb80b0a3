"""Safe HDF5 access shared by both formats: opening, links, atomic output, chunks."""
