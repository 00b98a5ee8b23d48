"""Following the flow: RK4 integration in the reduced space of a fitted FlowField."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.utils.validation import check_is_fitted

from driftd.flow._validation import check_int, check_matrix, check_positive
from driftd.flow.worker import checkpoint

_MAX_MOVE = 0.1  # bandwidths per RK4 sub-step


@dataclass(frozen=True)
class Trajectory:
    """A simulated path with s recorded positions (s = n_steps + 1 unless stopped early).

    ``times`` (s,) float64 seconds after the start; ``positions`` (s, d) float32 full
    space (unit norm if the field normalises); ``speeds`` (s,) float64 full-space
    speed per second; ``support`` (s,) float64 effective sample count; ``stop_reason``
    "steps", "low_speed" or "left_support". With an ensemble (else None):
    ``ensemble_positions`` (s, d) float32, the lifted mean of the replicates' paths;
    ``band_radius`` (s,) float64, embedding units, the coverage quantile of the
    replicates' distances from it; ``ensemble_state`` (B, r) float64, the replicates'
    reduced states at the last position (pass it back to continue the band).
    """

    times: np.ndarray
    positions: np.ndarray
    speeds: np.ndarray
    support: np.ndarray
    stop_reason: str
    ensemble_positions: np.ndarray | None = None
    band_radius: np.ndarray | None = None
    ensemble_state: np.ndarray | None = None


def advance(field, Z: np.ndarray, duration, max_step: float, *, velocity=None) -> np.ndarray:
    """Advance every row of Z (n, r) by ``duration`` seconds (a float, or (n,) per row)
    along the reduced flow.

    Classical RK4 with a per-row sub-step of at most ``max_step`` seconds that moves
    at most 0.1 bandwidth (the scale on which the kernel field varies). ``velocity``
    (Z_rows (m, r), rows (m,) int64) -> (m, r) gives each row its own field (the
    bootstrap replicates of :class:`driftd.flow.ensemble.FlowEnsemble`); None means
    ``field``'s. Returns a new (n, r) float64 array.
    """
    if velocity is None:

        def velocity(z, rows):
            return field._velocity(z)

    Z = np.array(Z, dtype=np.float64)
    remaining = np.array(np.broadcast_to(np.asarray(duration, dtype=np.float64), len(Z)))
    active = np.flatnonzero(remaining > 0)
    move = _MAX_MOVE * field.bandwidth_
    while active.size:
        checkpoint()
        z = Z[active]
        k1 = velocity(z, active)
        speed = np.linalg.norm(k1, axis=1)
        s = np.minimum(remaining[active], max_step)
        fast = speed * s > move
        s[fast] = move / speed[fast]
        h = s[:, None]
        k2 = velocity(z + 0.5 * h * k1, active)
        k3 = velocity(z + 0.5 * h * k2, active)
        k4 = velocity(z + h * k3, active)
        Z[active] = z + h / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        remaining[active] -= s
        active = active[remaining[active] > 0]
    return Z


def simulate(
    field,
    x0,
    *,
    n_steps,
    dt=None,
    stop_speed=None,
    stop_outside_support=False,
    ensemble=None,
    band_coverage=0.9,
    ensemble_state=None,
) -> Trajectory:
    """Follow the flow of a fitted FlowField from x0 (d,) for up to ``n_steps`` steps.

    Each step of ``dt`` seconds (default ``field.time_scale_``) is integrated with RK4
    in the reduced space (sub-steps <= time_scale_ and <= 0.1 bandwidth, see
    :func:`advance`), then lifted to the full space (onto the unit sphere if the
    field normalises). The state of every step is re-read from the recorded float32
    position, so calling ``simulate`` again from ``positions[-1]`` continues the same
    path exactly: the engine can stream long paths in chunks.

    positions[0] is x0 projected onto the model. Stops early with "low_speed" when the
    speed at a recorded position is below ``stop_speed`` (per second), or
    "left_support" when ``stop_outside_support`` and the position (at step 0: x0
    itself) is out of support.

    With ``ensemble`` (a :class:`driftd.flow.ensemble.FlowEnsemble` of this field) every
    replicate follows its own flow in lockstep from the same start (or from
    ``ensemble_state`` (B, r), a previous chunk's), and each step records the band of
    :meth:`FlowEnsemble.band` at ``band_coverage`` (0 < band_coverage < 1): the
    sampling uncertainty of the path, which grows where the data are sparse.
    """
    check_is_fitted(field, "coef_")
    x0 = np.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"x0 must be 1-D (n_features,), got shape {x0.shape}")
    x0 = check_matrix(x0[None], "x0", n_features=field.n_features_in_)
    n_steps = check_int(n_steps, "n_steps", minimum=0)
    dt = check_positive(dt, "dt", allow_none=True) or field.time_scale_
    stop_speed = check_positive(stop_speed, "stop_speed", allow_none=True)
    if not isinstance(stop_outside_support, bool):
        raise ValueError(f"stop_outside_support must be a bool, got {stop_outside_support!r}")

    z = field.transform(x0)
    if ensemble is not None:
        if ensemble.field_ is not field:
            raise ValueError("ensemble must be fitted on this field")
        if not 0.0 < band_coverage < 1.0:
            raise ValueError(f"band_coverage must be in (0, 1), got {band_coverage!r}")
        if ensemble_state is None:
            Zb = np.repeat(z, ensemble.n_replicates_, axis=0)
        else:
            Zb = check_matrix(ensemble_state, "ensemble_state", n_features=field.rank_)
            if len(Zb) != ensemble.n_replicates_:
                raise ValueError(f"ensemble_state must have {ensemble.n_replicates_} rows")
    pos = field._lift(z).astype(np.float32)
    here = x0  # support is judged at x0 itself (it may lie far off the model), then on the path
    positions, speeds, support, centres, radii = [], [], [], [], []
    stop_reason = "steps"
    for step in range(n_steps + 1):
        positions.append(pos[0])
        speeds.append(float(np.linalg.norm(field._lift_velocity(z, field._velocity(z)))))
        support.append(float(field.support(here)[0]))
        if ensemble is not None:
            centre, radius = ensemble.band(Zb, band_coverage)
            centres.append(centre.astype(np.float32))
            radii.append(radius)
        if stop_speed is not None and speeds[-1] < stop_speed:
            stop_reason = "low_speed"
            break
        if stop_outside_support and support[-1] < field.support_threshold_:
            stop_reason = "left_support"
            break
        if step == n_steps:
            break
        if ensemble is None:
            z = advance(field, z, dt, field.time_scale_)
        else:
            moved = ensemble.advance(np.vstack([z, Zb]), dt)
            z, Zb = moved[:1], moved[1:]
        pos = field._lift(z).astype(np.float32)
        z = field.transform(pos)
        here = pos
    return Trajectory(
        times=dt * np.arange(len(positions), dtype=np.float64),
        positions=np.stack(positions),
        speeds=np.asarray(speeds),
        support=np.asarray(support),
        stop_reason=stop_reason,
        ensemble_positions=np.stack(centres) if ensemble is not None else None,
        band_radius=np.asarray(radii) if ensemble is not None else None,
        ensemble_state=Zb if ensemble is not None else None,
    )
