"""Facts about the machine a benchmark ran on, so that its numbers can be compared and reproduced.

``collect_machine_facts()`` reads the CPU model and the instruction-set flags that matter for
inference (AVX2, AVX-512, VNNI, AMX on x86; NEON/ASIMD, dot product, i8mm, SVE on ARM), the cores,
memory, OS, Python, the versions of the runtime's libraries, onnxruntime's execution providers,
the TensorRT version when it is importable, the NVIDIA GPUs (``nvidia-smi --query-gpu``) and, on
a Jetson, the board model, L4T release and nvpmodel power mode (``nvpmodel -q``).

Every probe is best effort: a missing file, tool or package gives None (or an empty list), never
an error, and external tools are given PROBE_TIMEOUT_S to answer. The parsers are separate pure
functions so that they can be tested on recorded outputs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0  # how long an external tool (nvidia-smi, nvpmodel, sysctl) may take to answer
BYTES_PER_KIB = 1024
BYTES_PER_MIB = 1024 * 1024
CPUINFO = Path("/proc/cpuinfo")
MEMINFO = Path("/proc/meminfo")
NV_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
# CPU flags that change how fast int8/fp16/fp32 kernels run, by the names /proc/cpuinfo uses:
# x86 "flags" and ARM "Features". "asimd" is NEON on AArch64 ("neon" on 32-bit ARM).
INTERESTING_CPU_FLAGS = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
    "amx_tile", "amx_int8", "amx_bf16",
    "neon", "asimd", "asimdhp", "asimddp", "fphp", "i8mm", "bf16", "sve", "sve2",
)
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
NVIDIA_SMI_QUERY = ("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits")
NVPMODEL_QUERY = ("nvpmodel", "-q")
# Python distributions whose versions are recorded, by the name they are installed under.
LIBRARY_DISTRIBUTIONS = {
    "numpy": ("numpy",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino"),
    "opencv": ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python"),
    "sentencepiece": ("sentencepiece",),
    "soxr": ("soxr",),
    "tinymm": ("tinymm",),
}

CommandRunner = Callable[[Sequence[str]], "str | None"]


@dataclass(frozen=True)
class GpuFacts:
    name: str
    driver: str
    memory_total_bytes: int | None


@dataclass(frozen=True)
class JetsonFacts:
    model: str | None  # /proc/device-tree/model, e.g. "NVIDIA Jetson Orin Nano Developer Kit"
    l4t_release: str | None  # from /etc/nv_tegra_release, e.g. "R36.4.3"
    power_mode: str | None  # nvpmodel -q, e.g. "MAXN_SUPER"
    power_mode_id: int | None  # nvpmodel -q, e.g. 2


@dataclass(frozen=True)
class MachineFacts:
    """What a benchmark result depends on besides the model. Sizes in bytes."""

    cpu_model: str
    cpu_arch: str  # platform.machine(): x86_64, aarch64, arm64, ...
    cpu_flags: tuple[str, ...]  # the INTERESTING_CPU_FLAGS this CPU has
    cores_logical: int | None  # os.cpu_count()
    cores_available: int | None  # CPUs this process may run on (affinity, cgroup cpusets)
    threads_requested: int | None  # the --threads asked for; 0 = the library's default
    memory_total_bytes: int | None
    memory_available_bytes: int | None
    os: str  # platform.platform()
    python: str  # "3.12.3 (CPython)"
    libraries: dict[str, str | None]  # numpy, onnxruntime, opencv, ... -> version (None: not installed)
    ort_providers: tuple[str, ...]  # onnxruntime.get_available_providers()
    tensorrt: str | None  # TensorRT version when the Python package imports
    gpus: tuple[GpuFacts, ...] = ()
    board: str | None = None  # device-tree model on ARM boards (Jetson, Raspberry Pi, ...)
    jetson: JetsonFacts | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # anything a caller adds (e.g. opencv threads)

    @property
    def has_int8_dot_product(self) -> bool:
        """VNNI / AMX on x86, SDOT/UDOT (asimddp) on ARM: what makes int8 GEMMs faster than fp32."""
        return any(f in self.cpu_flags for f in INT8_DOT_PRODUCT_FLAGS)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cpu_flags"] = list(self.cpu_flags)
        out["ort_providers"] = list(self.ort_providers)
        out["gpus"] = [asdict(g) for g in self.gpus]
        return out

    def summary(self) -> str:
        """One line: CPU, cores, memory, GPU, OS and the main library versions."""
        parts = [f"{self.cpu_model} ({self.cpu_arch}; {' '.join(self.cpu_flags) or 'no listed flags'})",
                 f"{self.cores_available or self.cores_logical} cores"]
        if self.memory_total_bytes:
            parts.append(f"{self.memory_total_bytes / (BYTES_PER_MIB * 1024):.1f} GiB RAM")
        parts += [f"GPU {g.name} (driver {g.driver})" for g in self.gpus]
        if self.jetson is not None:
            parts.append(f"{self.jetson.model or 'Jetson'} {self.jetson.l4t_release or ''} "
                         f"nvpmodel {self.jetson.power_mode or '?'}".replace("  ", " "))
        parts += [self.os, f"Python {self.python}"]
        parts += [f"{name} {version}" for name, version in self.libraries.items() if version]
        if self.tensorrt:
            parts.append(f"TensorRT {self.tensorrt}")
        return ", ".join(parts)


# ---- parsers of recorded outputs -------------------------------------------------------------


def parse_cpuinfo(text: str) -> tuple[str | None, tuple[str, ...]]:
    """(model name, interesting flags) from the text of /proc/cpuinfo (x86 or ARM)."""
    model = None
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if model is None and key in ("model name", "hardware", "cpu model"):
            model = value.strip() or None
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, tuple(f for f in INTERESTING_CPU_FLAGS if f in flags)


def parse_meminfo(text: str) -> tuple[int | None, int | None]:
    """(total, available) bytes from the text of /proc/meminfo (values there are in kB = KiB)."""
    values = {}
    for line in text.splitlines():
        match = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if match:
            values[match.group(1)] = int(match.group(2)) * BYTES_PER_KIB
    return values.get("MemTotal"), values.get("MemAvailable", values.get("MemFree"))


def parse_nvidia_smi(text: str) -> tuple[GpuFacts, ...]:
    """GPUs from ``nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader,nounits``.

    Memory is reported in MiB; "[N/A]" (e.g. on a Jetson) gives None.
    """
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[0]:
            continue
        name, driver, memory = fields
        memory_bytes = int(float(memory) * BYTES_PER_MIB) if re.fullmatch(r"\d+(\.\d+)?", memory) else None
        gpus.append(GpuFacts(name, driver, memory_bytes))
    return tuple(gpus)


def parse_nv_tegra_release(text: str) -> str | None:
    """"R35.4.1" from ``# R35 (release), REVISION: 4.1, GCID: ..., BOARD: t186ref, ...``."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"R{match.group(1)}.{match.group(2)}" if match else None


def parse_nvpmodel(text: str) -> tuple[str | None, int | None]:
    """(mode name, mode id) from ``nvpmodel -q``: ``NV Power Mode: MAXN_SUPER`` then the id line."""
    name = mode_id = None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        match = re.match(r"NV Power Mode:\s*(.+)", line)
        if match:
            name = match.group(1).strip()
            if i + 1 < len(lines) and lines[i + 1].isdigit():
                mode_id = int(lines[i + 1])
    return name, mode_id


# ---- probes ----------------------------------------------------------------------------------


def run_command(argv: Sequence[str]) -> str | None:
    """The stdout of ``argv``, or None when the tool is missing, fails or hangs."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        logger.debug("%s: %s", argv[0], e)
        return None
    if done.returncode != 0:
        logger.debug("%s exited with %d: %s", argv[0], done.returncode, done.stderr.strip()[:200])
        return None
    return done.stdout


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _cpu(run: CommandRunner) -> tuple[str, tuple[str, ...]]:
    model, flags = parse_cpuinfo(_read_text(CPUINFO) or "")
    if model is None and sys.platform == "darwin":
        model = (run(("sysctl", "-n", "machdep.cpu.brand_string")) or "").strip() or None
        if platform.machine() == "arm64":
            flags = ("asimd",)  # Apple silicon: NEON is part of the architecture
    return model or platform.processor() or platform.machine() or "unknown", flags


def _memory() -> tuple[int | None, int | None]:
    total, available = parse_meminfo(_read_text(MEMINFO) or "")
    if total is None:
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            total = None
    return total, available


def _cores_available() -> int | None:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def _library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name, distributions in LIBRARY_DISTRIBUTIONS.items():
        versions[name] = None
        for dist in distributions:
            try:
                versions[name] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def _ort_providers() -> tuple[str, ...]:
    if importlib.util.find_spec("onnxruntime") is None:
        return ()
    try:
        import onnxruntime
    except ImportError as e:  # installed but broken (e.g. a GPU build without its CUDA libraries)
        logger.debug("onnxruntime does not import: %s", e)
        return ()
    return tuple(onnxruntime.get_available_providers())


def _tensorrt_version() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt
    except Exception as e:  # noqa: BLE001 - a TensorRT that fails to load is reported as absent
        logger.debug("tensorrt does not import: %s", e)
        return None
    return str(getattr(tensorrt, "__version__", "unknown"))


def _jetson(run: CommandRunner, board: str | None) -> JetsonFacts | None:
    release_text = _read_text(NV_TEGRA_RELEASE)
    if release_text is None and "jetson" not in (board or "").lower():
        return None
    mode, mode_id = parse_nvpmodel(run(NVPMODEL_QUERY) or "")
    release = parse_nv_tegra_release(release_text or "")
    return JetsonFacts(board, release, mode, mode_id)


def collect_machine_facts(threads: int | None = None, *, run: CommandRunner = run_command) -> MachineFacts:
    """Probe this machine. ``threads`` is the thread count the benchmark asked for (0 = default).

    Takes well under a second where no tool hangs; imports onnxruntime (for its providers) and
    tensorrt when installed. ``run`` executes external tools (replaceable in tests).
    """
    model, flags = _cpu(run)
    total, available = _memory()
    board = (_read_text(DEVICE_TREE_MODEL) or "").strip("\x00\n ") or None
    return MachineFacts(
        cpu_model=model,
        cpu_arch=platform.machine(),
        cpu_flags=flags,
        cores_logical=os.cpu_count(),
        cores_available=_cores_available(),
        threads_requested=threads,
        memory_total_bytes=total,
        memory_available_bytes=available,
        os=platform.platform(),
        python=f"{platform.python_version()} ({platform.python_implementation()})",
        libraries=_library_versions(),
        ort_providers=_ort_providers(),
        tensorrt=_tensorrt_version(),
        gpus=parse_nvidia_smi(run(NVIDIA_SMI_QUERY) or ""),
        board=board,
        jetson=_jetson(run, board),
    )
