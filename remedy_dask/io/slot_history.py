"""Known periods when the IFU slot written in the raw files is not the slot the IFU sat in.

From Remedy's ``catch_ifuslot_swap`` (see docs/design.md): from 2019-12-02 to 2020-06-23 the
IFUs in slots 015 and 024 were recorded under each other's slot, and from 2020-01-15 to
2020-01-27 the IFU in slot 079 was recorded as 078.  remedy-dask corrects the slot when it lists
the frames (calibration and science alike, so the calibration groups, the fplane look-up and
every product use the physical slot) and records the correction in the products.
"""

from __future__ import annotations

# (first night, last night, {recorded slot: physical slot}), nights YYYYMMDD inclusive
SLOT_SWAPS: tuple[tuple[str, str, dict[int, int]], ...] = (
    ("20191202", "20200623", {15: 24, 24: 15}),
    ("20200115", "20200127", {78: 79}),
)


def physical_slot(date: str, recorded: int) -> int:
    """The slot the IFU recorded as ``recorded`` on night ``date`` really sat in."""
    for first, last, swap in SLOT_SWAPS:
        if first <= date <= last and recorded in swap:
            return swap[recorded]
    return recorded


def slot_note(date: str, recorded: int) -> str:
    """The product note for a corrected slot ('' when the slot is as recorded)."""
    physical = physical_slot(date, recorded)
    if physical == recorded:
        return ""
    return (f"IFU slot {recorded:03d} in the raw files of {date} is the IFU in slot "
            f"{physical:03d} (known slot swap): reduced as {physical:03d}")
