import pytest

from collectors.core.model import Quality, Reading
from collectors.core.report import ReportFilter, bad_readings

pytestmark = pytest.mark.unit


def r(value: object, quality: str = Quality.GOOD) -> Reading:
    return Reading("d", "t", value, 0, quality)  # type: ignore[arg-type]


def test_deadband_zero_reports_every_poll() -> None:
    f = ReportFilter()
    assert all(f.accept(r(1.0), 0, 60, now) for now in range(5))


def test_deadband_suppresses_small_moves_and_heartbeat_breaks_the_silence() -> None:
    f = ReportFilter()
    assert f.accept(r(10.0), 0.5, 60, 0)
    assert not f.accept(r(10.4), 0.5, 60, 1)
    assert f.accept(r(10.5), 0.5, 60, 2)          # moved 0.5 from the last reported
    assert not f.accept(r(10.5), 0.5, 60, 30)
    assert f.accept(r(10.5), 0.5, 60, 62)         # heartbeat: silent for max_silence


def test_quality_change_is_always_reported() -> None:
    f = ReportFilter()
    assert f.accept(r(1.0), 5, 60, 0)
    assert f.accept(r(1.0, Quality.BAD), 5, 60, 1)
    assert f.accept(r(1.0), 5, 60, 2)


def test_strings_and_bools_report_on_change() -> None:
    f = ReportFilter()
    assert f.accept(r("A"), 1, 60, 0)
    assert not f.accept(r("A"), 1, 60, 1)
    assert f.accept(r("B"), 1, 60, 2)
    g = ReportFilter()
    assert g.accept(r(True), 1, 60, 0)
    assert g.accept(r(False), 1, 60, 1)


def test_bad_readings_carry_the_last_value() -> None:
    f = ReportFilter()
    f.accept(r(21.5), 0, 60, 0)
    (bad,) = bad_readings("d", ["t"], f, 5, "timeout")
    assert (bad.value, bad.quality, bad.reason) == (21.5, "bad", "timeout")
