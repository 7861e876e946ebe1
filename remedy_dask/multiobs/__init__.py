"""Kernels that work across observation products: spectra at sky positions, mosaic cubes and
merged catalogues (pure numpy; the products are read in :mod:`remedy_dask.io`)."""
