"""The tegrastats parser on recorded lines from Nano, Xavier and Orin, and the sampler thread."""

from __future__ import annotations

import sys
import time

import pytest

from tinymm.bench.tegrastats import (
    TegrastatsSample, TegrastatsSampler, parse_tegrastats_line, summarize_samples,
)

# Jetson Nano, L4T R32: rails "current/average" in mW without a unit, upper-case sensors.
NANO = (
    "RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [30%@1036,33%@1036,28%@1036,26%@1036] EMC_FREQ 10%@1600 GR3D_FREQ 0%@76 NVENC 716 NVDEC 716 "
    "APE 25 PLL@57C CPU@60.5C PMIC@100C GPU@59C AO@65C thermal@59.75C "
    "POM_5V_IN 4520/4680 POM_5V_GPU 0/0 POM_5V_CPU 1078/1205"
)
# Jetson AGX Xavier, L4T R32: VDD_* rails without a unit, negative readings of idle sensors.
XAVIER = (
    "RAM 4722/7844MB (lfb 1x512kB) CPU [55%@2035,14%@2034,27%@2034,55%@2035,47%@2035,45%@2035] "
    "SWAP 149/1024MB (cached 7MB) EMC_FREQ 2%@1866 GR3D_FREQ 37%@1300 APE 150 MTS fg 0% bg 0% "
    "BCPU@-45C MCPU@-45C GPU@-51C PLL@45C AO@47.5C Tboard@37C Tdiode@46.75C PMIC@100C thermal@46.4C "
    "VDD_IN 14025/14416 VDD_CPU 2209/2538 VDD_GPU 6854/6903 VDD_SOC 1371/1370 VDD_WIFI 19/19 "
    "NVENC 716 NVDEC 716 VDD_DDR 2702/2702"
)
# Jetson Orin Nano, L4T R36 (JetPack 6): a timestamp first, rails with mW units, lower-case sensors.
ORIN_NANO = (
    "07-14-2025 10:29:36 RAM 2147/7620MB (lfb 2x4MB) SWAP 1476/3810MB (cached 1MB) "
    "CPU [0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] GR3D_FREQ 0% cpu@47.687C soc2@46.718C "
    "soc0@47.468C gpu@48.625C tj@48.625C soc1@48.25C VDD_IN 4556mW/4556mW VDD_CPU_GPU_CV 483mW/483mW "
    "VDD_SOC 1451mW/1451mW"
)
# Jetson Orin NX, L4T R36: cores switched off, a GPU frequency list, and a sensor that is off (-256C).
ORIN_NX = (
    "RAM 1224/15368MB (lfb 8x4MB) SWAP 0/7684MB (cached 0MB) CPU [1%@729,0%@729,0%@729,0%@729,off,off,off,off] "
    "EMC_FREQ 0% GR3D_FREQ 0%@[305] CPU@43.5C GPU@42.5C tj@43.5C SOC0@42.906C SOC1@42.156C CV0@-256C "
    "VDD_IN 4319mW/4319mW VDD_CPU_GPU_CV 499mW/499mW VDD_SOC 1200mW/1200mW"
)


def test_nano_line():
    s = parse_tegrastats_line(NANO, t_s=1.5)
    assert s.t_s == 1.5
    assert s.rails_mw == {"POM_5V_IN": 4520, "POM_5V_GPU": 0, "POM_5V_CPU": 1078}
    assert s.rails_avg_mw["POM_5V_IN"] == 4680
    assert s.temperatures_c == {"PLL": 57, "CPU": 60.5, "PMIC": 100, "GPU": 59, "AO": 65, "thermal": 59.75}
    assert (s.ram_used_mb, s.ram_total_mb, s.gpu_load_percent) == (1180, 3965, 0.0)


def test_xavier_line_has_negative_temperatures_and_no_fake_rails():
    s = parse_tegrastats_line(XAVIER)
    assert list(s.rails_mw) == ["VDD_IN", "VDD_CPU", "VDD_GPU", "VDD_SOC", "VDD_WIFI", "VDD_DDR"]
    assert s.rails_mw["VDD_IN"] == 14025 and s.rails_avg_mw["VDD_IN"] == 14416
    # RAM/SWAP totals, NVENC/NVDEC clocks and APE are not power rails.
    assert not {"RAM", "SWAP", "NVENC", "NVDEC", "APE"} & set(s.rails_mw)
    assert s.temperatures_c["BCPU"] == -45 and s.temperatures_c["Tdiode"] == 46.75
    assert s.gpu_load_percent == 37.0


def test_orin_nano_line_with_timestamp_and_units():
    s = parse_tegrastats_line(ORIN_NANO)
    assert s.rails_mw == {"VDD_IN": 4556, "VDD_CPU_GPU_CV": 483, "VDD_SOC": 1451}
    assert s.temperatures_c["cpu"] == 47.687 and s.temperatures_c["tj"] == 48.625
    assert len(s.temperatures_c) == 6  # no CPU clock ("0%@729") read as a temperature
    assert (s.ram_used_mb, s.ram_total_mb) == (2147, 7620)


def test_orin_nx_drops_sensors_that_are_off():
    s = parse_tegrastats_line(ORIN_NX)
    assert "CV0" not in s.temperatures_c
    assert s.temperatures_c["SOC1"] == 42.156
    assert s.rails_mw["VDD_IN"] == 4319


@pytest.mark.parametrize("line", ["", "tegrastats: permission denied", "CPU [1%@729,off]"])
def test_lines_without_measurements_give_none(line):
    assert parse_tegrastats_line(line) is None


def test_summary_energy_mean_peak_and_total_rail():
    samples = [
        TegrastatsSample(0.0, {"VDD_IN": 4000.0, "VDD_SOC": 1000.0}, {}, {"tj": 50.0}, gpu_load_percent=10.0),
        TegrastatsSample(1.0, {"VDD_IN": 6000.0, "VDD_SOC": 1000.0}, {}, {"tj": 54.0}, gpu_load_percent=30.0),
        TegrastatsSample(3.0, {"VDD_IN": 6000.0}, {}, {"tj": 52.0}),
    ]
    p = summarize_samples(samples)
    assert p.samples == 3 and p.duration_s == 3.0
    assert p.total_rail == "VDD_IN"
    assert p.rails["VDD_IN"].mean_mw == pytest.approx(16000 / 3)
    assert p.rails["VDD_IN"].peak_mw == 6000
    # Trapezoids: 1 s at (4+6)/2 W + 2 s at 6 W = 17 J.
    assert p.rails["VDD_IN"].energy_j == pytest.approx(17.0)
    assert p.rails["VDD_SOC"].energy_j == pytest.approx(1.0)
    assert p.temperatures["tj"].peak_c == 54.0 and p.temperatures["tj"].mean_c == pytest.approx(52.0)
    assert p.gpu_load_mean_percent == 20.0
    assert p.total_power_mean_w == pytest.approx(16 / 3)
    assert p.to_dict()["rails"]["VDD_IN"]["energy_j"] == pytest.approx(17.0)


def test_summary_picks_the_nano_input_rail_and_handles_no_samples():
    p = summarize_samples([parse_tegrastats_line(NANO)])
    assert p.total_rail == "POM_5V_IN" and p.rails["POM_5V_IN"].energy_j == 0.0
    empty = summarize_samples([])
    assert empty.samples == 0 and empty.total_rail is None and empty.total_power_mean_w is None


def test_sampler_reads_a_fake_tegrastats_and_stops_it():
    # A stand-in for tegrastats: prints recorded lines, then keeps running until it is stopped.
    script = (
        "import sys, time\n"
        f"for line in {[NANO, 'garbage', ORIN_NANO]!r}:\n"
        "    print(line, flush=True)\n"
        "    time.sleep(0.02)\n"
        "time.sleep(60)\n"
    )
    sampler = TegrastatsSampler(interval_ms=20, command=[sys.executable, "-c", script])
    with sampler:
        deadline = time.monotonic() + 20.0
        while len(sampler.samples) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    start = time.monotonic()
    samples = sampler.stop()  # a second stop is harmless
    assert time.monotonic() - start < 5.0
    assert [sorted(s.rails_mw)[0] for s in samples] == ["POM_5V_CPU", "VDD_CPU_GPU_CV"]
    assert samples[0].t_s <= samples[1].t_s
    assert sampler.summary().samples == 2


def test_sampler_builds_the_tegrastats_command_and_checks_the_interval():
    assert TegrastatsSampler(250).command == ["tegrastats", "--interval", "250"]
    for bad in (0, 5, 1.5, True):
        with pytest.raises(ValueError, match="interval"):
            TegrastatsSampler(bad)
