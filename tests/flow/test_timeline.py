import numpy as np

from driftd.flow.timeline import clock_resolution, spread_appended, spread_ties

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


def test_spread_appended_matches_spreading_the_whole_timeline():
    # two series on a daily clock, ties in both; the new rows continue one series
    # (tied among themselves) and start another
    t = np.array([0, 0, 2, 2, 2, 5, 5], dtype=float) * DAY
    series = np.array([0, 0, 1, 1, 0, 1, 2])
    n = 4
    new = spread_appended(t[:n], series[:n], t[n:], series[n:])
    np.testing.assert_array_equal(new, spread_ties(t, series)[n:])
    np.testing.assert_array_equal(spread_ties(t[:n], series[:n]), spread_ties(t, series)[:n])


def test_spread_appended_refuses_what_would_respread_old_rows():
    t, series = np.array([0, DAY, DAY]), np.array([0, 0, 0])
    # a tie with the series' last day would join (and respread) its run
    assert spread_appended(t, series, [DAY], [0]) is None
    assert spread_appended(t, series, [0.5 * DAY], [0]) is None  # earlier, finer clock
    assert spread_appended(t, series, [2 * DAY + 30], [0]) is None  # finer clock
    assert spread_appended(t, series, [DAY], [1]) is not None  # another series
    # on a sub-second clock nothing is spread: an equal time is a zero gap, not a tie
    fine = np.array([0.0, 1.5, 2.5])
    np.testing.assert_array_equal(spread_appended(fine, series, [2.5], [0]), [2.5])
    assert spread_appended(fine, series, [2.0], [0]) is None
