"""The per-observation fan-in: astrometry, PSF and DAR, flux calibration, continuum sources, emission-line detection and data cubes."""
