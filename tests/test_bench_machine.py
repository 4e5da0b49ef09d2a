"""Machine facts (parsers on recorded outputs, keys and types) and process memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tinymm.bench import machine
from tinymm.bench.machine import (
    GpuFacts, MachineFacts, collect_machine_facts, parse_cpuinfo, parse_meminfo, parse_nv_tegra_release,
    parse_nvidia_smi, parse_nvpmodel,
)
from tinymm.bench.memory import (
    _ru_maxrss_unit_bytes, current_rss_bytes, memory_snapshot, parse_compute_apps, peak_rss_bytes,
)

X86_CPUINFO = textwrap.dedent("""\
    processor\t: 0
    vendor_id\t: GenuineIntel
    model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
    flags\t\t: fpu sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni

    processor\t: 1
    model name\t: Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz
    flags\t\t: fpu sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni
""")
ORIN_CPUINFO = textwrap.dedent("""\
    processor\t: 0
    model name\t: ARMv8 Processor rev 1 (v8l)
    BogoMIPS\t: 62.50
    Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
    CPU implementer\t: 0x41
""")
MEMINFO = "MemTotal:        7990716 kB\nMemFree:          512000 kB\nMemAvailable:    6000000 kB\n"
NVIDIA_SMI = "NVIDIA H100 80GB HBM3, 550.54.15, 81559\nOrin (nvgpu), 540.4.0, [N/A]\n"
NV_TEGRA_RELEASE = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n"
NVPMODEL = "NV Power Mode: MAXN_SUPER\n2\n"
EXPECTED_KEYS = {
    "cpu_model", "cpu_arch", "cpu_flags", "cores_logical", "cores_available", "threads_requested",
    "memory_total_bytes", "memory_available_bytes", "os", "python", "libraries", "ort_providers", "tensorrt",
    "gpus", "board", "jetson", "extra",
}


def test_parse_cpuinfo_x86_and_arm():
    model, flags = parse_cpuinfo(X86_CPUINFO)
    assert model == "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"
    assert {"avx2", "avx512f", "avx512_vnni"} <= set(flags) and "fpu" not in flags
    model, flags = parse_cpuinfo(ORIN_CPUINFO)
    assert model == "ARMv8 Processor rev 1 (v8l)"
    assert {"asimd", "asimdhp", "asimddp", "fphp"} <= set(flags)


def test_parse_meminfo_nvidia_smi_tegra_release_and_nvpmodel():
    assert parse_meminfo(MEMINFO) == (7990716 * 1024, 6000000 * 1024)
    h100, orin = parse_nvidia_smi(NVIDIA_SMI)
    assert h100 == GpuFacts("NVIDIA H100 80GB HBM3", "550.54.15", 81559 * 1024 * 1024)
    assert orin.memory_total_bytes is None
    assert parse_nvidia_smi("") == ()
    assert parse_nv_tegra_release(NV_TEGRA_RELEASE) == "R36.4.3"
    assert parse_nv_tegra_release("nonsense") is None
    assert parse_nvpmodel(NVPMODEL) == ("MAXN_SUPER", 2)
    assert parse_nvpmodel("") == (None, None)


def test_collect_machine_facts_keys_and_types():
    facts = collect_machine_facts(threads=2, run=lambda argv: None)  # no external tools
    d = facts.to_dict()
    assert set(d) == EXPECTED_KEYS
    json.dumps(d)  # JSON-able as is
    assert isinstance(facts.cpu_model, str) and facts.cpu_model
    assert isinstance(facts.cpu_arch, str) and facts.cpu_arch
    assert all(isinstance(f, str) for f in facts.cpu_flags)
    assert isinstance(facts.cores_logical, int) and facts.cores_logical >= 1
    assert facts.threads_requested == 2
    assert facts.memory_total_bytes is None or facts.memory_total_bytes > 0
    assert isinstance(facts.os, str) and isinstance(facts.python, str)
    assert set(facts.libraries) >= {"numpy", "onnxruntime", "opencv", "tinymm"}
    assert facts.libraries["numpy"]  # installed in every environment tinymm runs in
    assert "CPUExecutionProvider" in facts.ort_providers
    assert facts.gpus == ()  # the fake runner gave no nvidia-smi
    assert isinstance(facts.has_int8_dot_product, bool)
    assert facts.cpu_model in facts.summary()


def test_collect_machine_facts_reads_gpus_and_a_jetson(tmp_path, monkeypatch):
    release = tmp_path / "nv_tegra_release"
    release.write_text(NV_TEGRA_RELEASE)
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00")
    monkeypatch.setattr(machine, "NV_TEGRA_RELEASE", release)
    monkeypatch.setattr(machine, "DEVICE_TREE_MODEL", model)
    outputs = {"nvidia-smi": NVIDIA_SMI, "nvpmodel": NVPMODEL}
    facts = collect_machine_facts(run=lambda argv: outputs.get(argv[0]))
    assert [g.name for g in facts.gpus] == ["NVIDIA H100 80GB HBM3", "Orin (nvgpu)"]
    assert facts.board == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert facts.jetson is not None
    jetson = facts.jetson
    assert (jetson.l4t_release, jetson.power_mode, jetson.power_mode_id) == ("R36.4.3", "MAXN_SUPER", 2)
    assert facts.to_dict()["jetson"]["power_mode"] == "MAXN_SUPER"
    assert "nvpmodel MAXN_SUPER" in facts.summary()


def test_a_board_that_is_not_a_jetson_has_no_jetson_facts(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    monkeypatch.setattr(machine, "NV_TEGRA_RELEASE", tmp_path / "missing")
    monkeypatch.setattr(machine, "DEVICE_TREE_MODEL", model)
    facts = collect_machine_facts(run=lambda argv: None)
    assert facts.board == "Raspberry Pi 5 Model B Rev 1.0" and facts.jetson is None


def test_run_command_gives_none_for_a_missing_or_failing_tool():
    assert machine.run_command(["tinymm-no-such-tool-here"]) is None
    assert machine.run_command([sys.executable, "-c", "import sys; sys.exit(3)"]) is None
    assert machine.run_command([sys.executable, "-c", "print('ok')"]).strip() == "ok"


def test_ru_maxrss_units_differ_between_linux_and_macos():
    assert _ru_maxrss_unit_bytes("linux") == 1024
    assert _ru_maxrss_unit_bytes("darwin") == 1


def test_peak_rss_grows_after_allocating_a_big_array():
    # In a fresh interpreter, so that no earlier test has pushed the high-water mark up. Linux
    # carries the parent's peak across fork + exec, so the block is sized to rise above it.
    script = textwrap.dedent("""\
        import json
        import numpy as np
        from tinymm.bench.memory import peak_rss_bytes, current_rss_bytes
        growth = 64 * 1024 * 1024
        before, now = peak_rss_bytes(), current_rss_bytes()
        size = growth + max(before - now, 0) if before is not None and now is not None else growth
        block = np.ones(size // 8)  # every page touched
        print(json.dumps([before, peak_rss_bytes(), current_rss_bytes(), growth, int(block.nbytes)]))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    before, after, current, growth, nbytes = json.loads(out.stdout.strip().splitlines()[-1])
    if before is None:
        pytest.skip("resource.getrusage is not available on this platform")
    assert after - before >= 0.9 * growth
    if current is not None:
        assert current >= 0.9 * nbytes


def test_memory_snapshot_and_current_rss():
    snap = memory_snapshot()
    if sys.platform.startswith("linux"):
        assert current_rss_bytes() > 0
        assert snap.rss_bytes > 0 and snap.peak_rss_bytes >= snap.rss_bytes
    assert peak_rss_bytes() is None or peak_rss_bytes() > 0
    assert snap.gpu_bytes is None
    assert set(snap.to_dict()) == {"rss_bytes", "peak_rss_bytes", "gpu_bytes"}


def test_parse_compute_apps_sums_this_pid_only():
    text = "1234, 500\n999, 7000\n1234, 250\n"
    assert parse_compute_apps(text, 1234) == 750 * 1024 * 1024
    assert parse_compute_apps(text, 42) is None
    assert parse_compute_apps("", 1) is None


def test_machine_facts_is_frozen():
    facts = collect_machine_facts(run=lambda argv: None)
    assert isinstance(facts, MachineFacts)
    with pytest.raises(AttributeError):
        facts.cpu_model = "x"  # type: ignore[misc]
