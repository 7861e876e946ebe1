"""Parameter covariance of a weighted least-squares fit whose data errors are correlated."""

from __future__ import annotations

import numpy as np


def sandwich_covariance(pcov: np.ndarray, jac: np.ndarray, sigma: np.ndarray,
                        corr: np.ndarray) -> np.ndarray:
    """Covariance of the parameters of a fit weighted by ``1 / sigma^2`` when neighbouring data
    points are correlated with coefficient ``corr[k]`` (points k and k+1; the last entry unused).

    ``pcov`` = (J^T W J)^-1 is the covariance the fit reports (independent errors), ``jac``
    (n_data, n_par) the model's derivatives.  The estimate is unchanged by the correlation; its
    covariance is pcov (B^T R B) pcov with B = J / sigma and R the data's correlation matrix
    (1 on the diagonal, ``corr`` beside it).
    """
    b = np.asarray(jac, float) / np.asarray(sigma, float)[:, None]
    c = np.asarray(corr, float)[:-1]
    cross = (b[:-1] * c[:, None]).T @ b[1:]
    middle = b.T @ b + cross + cross.T
    return pcov @ middle @ pcov
