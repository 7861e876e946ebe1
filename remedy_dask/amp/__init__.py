"""The amplifier chain: one raw amp frame -> bias/dark, pixel mask, trace, scattered light, extraction, wavelength shift, rectification (and the calibration masters built from the same steps)."""
