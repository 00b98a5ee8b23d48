import numpy as np

from driftd.flow.timeline import clock_resolution, spread_ties

DAY = 86_400.0


def test_ties_spread_over_a_day_in_order_and_per_series():
    t = np.array([0, 0, 0, 0, DAY * 365, DAY * 365, 5 * DAY], dtype=float)
    series = np.array([0, 0, 0, 1, 0, 0, 1])
    out = spread_ties(t, series)
    assert clock_resolution(t) == DAY
    np.testing.assert_allclose(out[:3], [0, DAY / 3, 2 * DAY / 3])
    assert out[3] == 0  # alone in its series at that time
    np.testing.assert_allclose(out[4:6], [365 * DAY, 365.5 * DAY])
    assert out[6] == 5 * DAY


def test_spread_never_passes_the_next_time_and_keeps_untied_times():
    t = np.array([0, 0, 60, 61.5])
    out = spread_ties(t)
    assert clock_resolution(t) == 0.0
    np.testing.assert_array_equal(out, t)  # sub-second clock: nothing to infer
    t = np.array([0, 0, 0, 60], dtype=float)
    out = spread_ties(t)
    np.testing.assert_allclose(out, [0, 20, 40, 60])
    assert np.all(np.diff(out) > 0)
