"""Durations as a person reads them."""

import pytest

from humanize import duration, duration_ms


@pytest.mark.parametrize(
    "seconds, shown",
    [
        (None, "—"),
        (0, "0 µs"),
        (7.8e-05, "78 µs"),
        (0.0000994, "99 µs"),
        (0.000531, "0.5 ms"),
        (0.00999, "10 ms"),
        (0.0123, "12 ms"),
        (0.99996, "1.0 s"),
        (1.2, "1.2 s"),
        (9.96, "10 s"),
        (42.4, "42 s"),
        (59.6, "1 min 0 s"),
        (184, "3 min 4 s"),
        (3600, "1 h 0 min"),
        (7500, "2 h 5 min"),
        (3 * 86400 + 4 * 3600 + 59, "3 d 4 h"),
        (-0.5, "0 µs"),  # a clock step backwards never shows a negative time
    ],
)
def test_durations_read_like_a_person_says_them(seconds, shown):
    assert duration(seconds) == shown


def test_milliseconds_as_stored_on_jobs():
    assert duration_ms(0.078) == "78 µs" and duration_ms(1200.0) == "1.2 s" and duration_ms(None) == "—"
