"""Input validation shared by the flow package.

Messages follow scikit-learn's style: they name the argument, what was expected and
what was received, so the engine can forward them verbatim as INVALID_ARGUMENT.
"""

from __future__ import annotations

import numbers
from typing import Literal, overload

import numpy as np


def check_matrix(X, name: str = "X", *, n_features: int | None = None) -> np.ndarray:
    """Return ``X`` as a C-contiguous finite 2-D float array.

    float32 input stays float32 (halves memory for large collections); any other
    numeric dtype becomes float64. Raises ValueError on wrong rank, non-numeric
    dtype, NaN/inf, or a feature count different from ``n_features``.
    """
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(
            f"{name} has {X.shape[1]} features, but the model was fitted with {n_features}"
        )
    X = np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)
    if not np.isfinite(X).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return X


def check_vector(v, name: str, n: int, *, integer: bool = False) -> np.ndarray:
    """Return ``v`` as a finite 1-D array of length ``n`` (float64, or int64 if ``integer``)."""
    v = np.asarray(v)
    if v.ndim != 1 or v.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
    if integer:
        if v.dtype.kind not in "biu":
            raise ValueError(f"{name} must hold integer codes, got dtype {v.dtype}")
        return v.astype(np.int64, copy=False)
    if v.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {v.dtype}")
    v = v.astype(np.float64, copy=False)
    if not np.isfinite(v).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return v


@overload
def check_int(
    value: object, name: str, *, minimum: int, allow_none: Literal[False] = ...
) -> int: ...
@overload
def check_int(value: object, name: str, *, minimum: int, allow_none: bool) -> int | None: ...
def check_int(value, name: str, *, minimum: int, allow_none: bool = False) -> int | None:
    """Validate an integer parameter ``>= minimum`` (bools are rejected)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@overload
def check_positive(value: object, name: str, *, allow_none: Literal[False] = ...) -> float: ...
@overload
def check_positive(value: object, name: str, *, allow_none: bool) -> float | None: ...
def check_positive(value, name: str, *, allow_none: bool = False) -> float | None:
    """Validate a finite float parameter ``> 0``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not np.isfinite(float(value)) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def check_random_state(random_state) -> np.random.Generator:
    """Turn ``random_state`` (int >= 0, or None for fresh OS entropy) into a Generator."""
    if random_state is not None:
        check_int(random_state, "random_state", minimum=0)
    return np.random.default_rng(random_state)


def sklearn_seed(rng: np.random.Generator) -> int:
    """Draw an int seed for scikit-learn functions from ``rng`` (keeps one seed stream)."""
    return int(rng.integers(2**31 - 1))
