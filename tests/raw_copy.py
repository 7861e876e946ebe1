"""One IFU of a simulated observation untarred into a raw-data root of its own (helper of the
e2e tests that alter or kill a reduction and must not touch the shared night)."""

from __future__ import annotations

import tarfile
from pathlib import Path


def untar_ifu(sim: Path, root: Path, slot: int = 47, obs: int = 7, date: str = "20190822"
              ) -> Path:
    """The frames of IFU ``slot`` of ``sim``'s observation ``obs``, untarred as
    ``root/raw/DATE/virus/virusNNNNNNN/...``; returns ``root/raw``."""
    night = root / "raw" / date / "virus"
    night.mkdir(parents=True)
    with tarfile.open(sim / "raw" / date / "virus" / f"virus{obs:07d}.tar") as tar:
        tar.extractall(night, members=[m for m in tar.getmembers()
                                       if f"_{slot:03d}" in m.name or m.isdir()], filter="data")
    return root / "raw"
