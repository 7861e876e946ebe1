"""Emission-line detection: the matched filter over the fiber spectra (matched_filter) and line candidates, fits and the detection table (lines)."""
