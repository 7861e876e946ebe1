"""``reduction.spectral_masking: false`` (Remedy's ``--no_masking``): the amp chain keeps only the
extraction's own mask, and the checkpoint keys change with the setting."""

from __future__ import annotations

import numpy as np

from remedy_dask import geometry
from remedy_dask.amp.extract.optimal import Extraction
from remedy_dask.config import PipelineConfig
from remedy_dask.io.calfile import AmpCalibration
from remedy_dask.io.digest import config_digest
from remedy_dask.workflow.amp_chain import AmpExposure, mask_spectra

N, M = geometry.N_FIBERS_AMP, 1032


def _amp_exposure() -> tuple[AmpExposure, AmpCalibration]:
    """An extracted amp with one cosmic-ray column (chi2 50) on fiber 10 and an unmeasured
    pixel on fiber 20; calibration: flat fiber-to-fiber, fiber 30 dead."""
    chi2 = np.ones((N, M))
    chi2[10, 500] = 50.0
    ext_mask = np.zeros((N, M), bool)
    ext_mask[20, 100] = True
    ex = Extraction(spectrum=np.full((N, M), 100.0), error=np.full((N, M), 10.0), chi2=chi2,
                    mask=ext_mask, lost_fraction=np.zeros((N, M)), rejected=np.zeros((M, M), bool))
    wave = np.tile(np.linspace(3470.0, 5540.0, M), (N, 1))
    dead = np.zeros(N, bool)
    dead[30] = True
    cal = AmpCalibration(47, "LL", 37, 24, arrays={
        "fiber_to_fiber": np.ones((N, geometry.N_WAVE)), "dead": dead})
    ax = AmpExposure("047LL", 1, None, wavelength=wave, extraction=ex)
    return ax, cal


def test_spectral_masking_masks_the_cosmic_column_and_the_dead_fiber():
    ax, cal = _amp_exposure()
    out = mask_spectra(ax, cal, PipelineConfig().reduction)
    mask = out.extraction.mask
    # chi2 seed at column 500 dilated by 1 column each side: 499, 500, 501
    assert mask[10, 499:502].all() and not mask[10, 498] and not mask[10, 502]
    assert mask[30].all() and mask[20, 100]
    assert out.mask_counts["dead_fibers"] == [30]


def test_no_masking_keeps_only_the_pixels_the_extraction_could_not_measure():
    ax, cal = _amp_exposure()
    config = PipelineConfig().reduction
    config.spectral_masking = False
    out = mask_spectra(ax, cal, config)
    mask = out.extraction.mask
    assert np.flatnonzero(mask.ravel()).tolist() == [20 * M + 100]
    assert out.mask_counts == {"skipped": "reduction.spectral_masking is false", "extraction": 1}


def test_the_masking_setting_is_part_of_the_checkpoint_keys():
    on, off = PipelineConfig(), PipelineConfig()
    off.reduction.spectral_masking = False
    assert config_digest(on) != config_digest(off)
