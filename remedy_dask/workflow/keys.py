"""The keys of the science checkpoints: what each stored node's content depends on.

* amp-exposure (``expNN/{IFUSLOT}{AMP}``): its raw frame's identity, its amp's calibration
  digest, the same two of the other amp of its CCD (their wavelength shifts are pooled), the
  whole configuration and the digest of the code the amp chain runs (``io.digest.AMP_CODE``);
* exposure sky (``expNN/sky``): the keys of its amp-exposures in order, their calibration
  digests (fiber-to-fiber, dead fibers), the fplane and IFUcen contents (fiber positions), the
  whole configuration (dither pattern, sky parameters) and the digest of the code of the amp
  chain and the exposure fan-in (``io.digest.SKY_CODE``); with amps left out at run time, also their
  names (:func:`sky_without`).

A change to the observation stage's code (astrometry, PSF, flux calibration, ...) therefore
keeps every checkpoint, while a change to a kernel of the amp chain recomputes them all.

The observation stage (astrometry, flux calibration, sources, cubes) is not checkpointed: it is
recomputed on every run, so the catalogue and the throughput curve need no key here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from remedy_dask import geometry
from remedy_dask.io import calfile, store
from remedy_dask.io.digest import (
    AMP_CODE, SKY_CODE, code_digest, config_digest, file_digest, frame_identity,
)


@dataclass(frozen=True)
class CheckpointKeys:
    """Digests shared by every key of one observation's run."""

    amp_code: str
    sky_code: str
    config: str
    cal: dict[str, str]  # amp key -> calibration content digest
    fplane: str
    ifucen: str

    @classmethod
    def of(cls, plan: Any, cal_path: Path, config: Any, fplane: Path | None,
           ifucen: Path | None) -> CheckpointKeys:
        """Read the digests once (the calibration groups' attributes, the tables' bytes)."""
        return cls(code_digest(AMP_CODE), code_digest(SKY_CODE), config_digest(config),
                   calfile.amp_digests(cal_path, list(plan.cal_keys)),
                   file_digest(fplane), file_digest(ifucen) if ifucen else "standard")

    @classmethod
    def dry(cls, keys: list[str]) -> CheckpointKeys:
        """Placeholder digests (graph views, where no file is read)."""
        return cls("dry", "dry", "dry", {k: "dry" for k in keys}, "", "standard")

    def amp(self, plan: Any, exp: int, key: str) -> str:
        """Key of the amp-exposure (``exp``, ``key``)."""
        partner = key[:3] + geometry.ccd_partner(key[3:])
        pref = plan.refs.get((exp, partner)) if partner in plan.cal_keys else None
        return store.input_key(
            "amp", frame_identity(plan.refs[(exp, key)]), self.cal[key],
            frame_identity(pref) if pref is not None else None,
            self.cal.get(partner) if pref is not None else None, self.config, self.amp_code)

    def amp_alone(self, plan: Any, exp: int, key: str) -> str:
        """Key of the amp-exposure measured without the other amp of its CCD because that
        amp's chain was lost with its worker (``amp_graph.alone_chain``): never the key a run
        looks for, so a rerun recomputes it pooled, as a clean run does."""
        return store.input_key("amp without its lost partner", self.amp(plan, exp, key))

    def sky(self, plan: Any, exp: int) -> str:
        """Key of the sky-subtracted exposure ``exp``."""
        amps = [(k, self.amp(plan, exp, k), self.cal[k]) for k in plan.cal_keys
                if (exp, k) in plan.refs]
        return store.input_key("sky", exp, amps, self.fplane, self.ifucen, self.config,
                               self.sky_code)


def sky_without(key: str, failed: list[str]) -> str:
    """Key of a sky-subtracted exposure computed without the amps ``failed`` (left out while
    the run went on): a rerun in which they are reduced recomputes the sky, one in which the
    same amps fail again reuses it."""
    return store.input_key("sky", key, sorted(failed)) if failed else key
