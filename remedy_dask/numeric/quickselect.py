"""The package's one quickselect (compiled): the k-th smallest value of part of a buffer.

Branch-free Lomuto partitions with a median-of-three pivot and a separate pass for values equal
to the pivot, so ties cannot stall it; about 3x faster than a Hoare quickselect on the tile
quantiles and medians it serves (docs/benchmarks.md).
"""

from __future__ import annotations

from numba import njit


@njit(cache=True, nogil=True)
def _partition_below(a, lo, hi, pivot, inclusive):  # pragma: no cover - compiled
    """Move the values of a[lo:hi] below ``pivot`` (or equal, if ``inclusive``) to the front;
    return their end.  The swap is unconditional."""
    store = lo
    for i in range(lo, hi):
        v = a[i]
        a[i] = a[store]
        a[store] = v
        store += (v <= pivot) if inclusive else (v < pivot)
    return store


@njit(cache=True, nogil=True)
def select_kth(a, lo, hi, k):  # pragma: no cover - compiled
    """The value of rank ``k`` (0-based, lo <= k < hi) among a[lo:hi], reordering a[lo:hi] in
    place so that afterwards a[lo:k] <= a[k] <= a[k + 1:hi].  No NaN in a[lo:hi]."""
    while hi - lo > 1:
        x, y, z = a[lo], a[(lo + hi) // 2], a[hi - 1]
        pivot = max(min(x, y), min(max(x, y), z))
        below = _partition_below(a, lo, hi, pivot, False)
        if k < below:
            hi = below
            continue
        upto = _partition_below(a, below, hi, pivot, True)
        if k < upto:
            return pivot
        lo = upto
    return a[k]
