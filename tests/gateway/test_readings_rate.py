"""Readings/s and the Engine's stats, as both runtimes compute them for `fieldgate status`
(`gateway.runtime.metrics`): pure functions of the samples."""

from __future__ import annotations

import pytest

from gateway.runtime.metrics import ReadingsRate, cpu_percent, cpu_sample, memory_used, parse_metrics

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("samples", "rates"), [
    # (seconds, counter) -> readings/s after each sample
    ([(0, 100), (5, 150), (10, 200)], [None, 10.0, 10.0]),
    # the service restarted between two scrapes: its counter starts from zero again, and the
    # 20 it counted since are 20 readings, not -130 (0/s) nor nothing (the old rate kept)
    ([(0, 100), (5, 150), (10, 20), (15, 70)], [None, 10.0, 4.0, 10.0]),
    ([(0, 100), (5, 100)], [None, 0.0]),  # stalled: 0/s, honestly
    ([(0, 100), (0, 150), (5, 200)], [None, None, 10.0]),  # two samples at one instant: no rate yet
])
def test_readings_per_second_counts_a_reset_counter_from_zero(
    samples: list[tuple[float, float]], rates: list[float | None]
) -> None:
    rate = ReadingsRate()
    assert [rate.add(now, count) for now, count in samples] == pytest.approx(rates)


def test_metrics_text_sums_a_family_over_its_labels() -> None:
    text = ("# HELP fieldgate_modbus_readings_total readings\n# TYPE fieldgate_modbus_readings_total counter\n"
            'fieldgate_modbus_readings_total{device="press-1"} 10\n'
            'fieldgate_modbus_readings_total{device="meter-7"} 5.5\nbroken line\n')
    assert parse_metrics(text) == {"fieldgate_modbus_readings_total": 15.5}


def test_cpu_and_memory_as_docker_stats_reckons_them() -> None:
    first = {"cpu_stats": {"cpu_usage": {"total_usage": 1_000}, "system_cpu_usage": 10_000, "online_cpus": 2}}
    second = {"cpu_stats": {"cpu_usage": {"total_usage": 1_500}, "system_cpu_usage": 12_000, "online_cpus": 2},
              "memory_stats": {"usage": 50 * 2**20, "stats": {"inactive_file": 10 * 2**20}}}
    before = cpu_sample(first)[:2]
    assert cpu_percent(before, cpu_sample(second)) == 50.0  # 500 of 2,000 on 2 CPUs: half a core
    assert cpu_percent(before, cpu_sample(first)) is None  # no system time passed
    assert memory_used(second) == 40 * 2**20
    assert memory_used(first) is None
