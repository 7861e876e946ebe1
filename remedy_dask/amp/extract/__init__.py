"""Fiber extraction: optimal and aperture extraction (optimal) on prepared inputs (inputs) with compiled inner loops (kernels)."""
