"""The machine fingerprint: what decides whether two measurements may be compared."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata
from typing import Any

import psutil

# ISA extensions that change which int8/fp16/bf16 kernels a runtime picks.
ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "i8mm",
    "bf16",
    "sve",
)
RUNTIME_PACKAGES = (
    "onnxruntime",
    "onnx",
    "numpy",
    "openvino",
    "nncf",
    "tensorrt",
    "tensorrt-rtx-cu12",
    "cuda-python",
    "optuna",
)


@dataclass(frozen=True)
class Machine:
    cpu_model: str
    isa: tuple[str, ...]
    physical_cores: int
    logical_cores: int
    memory_gib: int
    os: str
    arch: str
    python: str
    gpus: tuple[str, ...] = ()
    runtimes: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def has_vnni(self) -> bool:
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & set(self.isa))

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "AMD64", "i686")

    @property
    def fingerprint_hash(self) -> str:
        """Hash of what makes timings comparable: the hardware and OS family. Runtime versions
        are keyed on every row separately, so a runtime upgrade does not hide a machine's history."""
        key = [
            self.cpu_model,
            self.isa,
            self.physical_cores,
            self.logical_cores,
            self.memory_gib,
            platform.system(),
            self.arch,
            self.gpus,
        ]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return {
            "hash": self.fingerprint_hash,
            "cpu_model": self.cpu_model,
            "isa": list(self.isa),
            "physical_cores": self.physical_cores,
            "logical_cores": self.logical_cores,
            "memory_gib": self.memory_gib,
            "os": self.os,
            "arch": self.arch,
            "python": self.python,
            "gpus": list(self.gpus),
            "runtimes": dict(self.runtimes),
        }

    def default_threads(self) -> int:
        """Intra-op threads when none are asked for: the physical cores, but no more than the CPUs
        this process may run on (taskset, a container's cpuset), where more threads only contend."""
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            usable = self.logical_cores
        return max(1, min(self.physical_cores, usable))

    def describe(self) -> str:
        isa = " ".join(self.isa) or "none detected"
        gpus = "; ".join(self.gpus) or "none"
        return (
            f"{self.cpu_model} ({self.physical_cores} cores / {self.logical_cores} threads, "
            f"{self.memory_gib} GiB), ISA: {isa}; GPU: {gpus}; {self.os}; Python {self.python}"
        )


#: The ISA feature that decides int8 speed first, as people name it; the first present names the CPU.
ISA_SUMMARY = (
    ("amx_int8", "AMX"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512f", "AVX-512, no VNNI"),
    ("avx2", "AVX2, no VNNI"),
    ("i8mm", "Arm i8mm"),
    ("asimddp", "Arm dot product"),
    ("asimd", "Arm NEON"),
)


def isa_summary(isa) -> str:
    """A CPU's int8 capability in a few words ("AVX2, no VNNI"; "+ BF16" where it has it)."""
    flags = set(isa or ())
    name = next((label for flag, label in ISA_SUMMARY if flag in flags), "no AVX2")
    return name + (" + BF16" if "avx512_bf16" in flags else "")


def _cpu_info(cpuinfo: str = "/proc/cpuinfo") -> tuple[str, tuple[str, ...]]:
    """The CPU's name and ISA flags. On x86 the name carries the CPU family and model numbers:
    a VM's brand string can be as bare as "AMD EPYC", which a Zen 2 and a Zen 3 would share
    (the flags in ISA_FLAGS are the same), and their timings must never be compared."""
    model, flags, family_model = platform.processor() or platform.machine(), set(), {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key in ("model name", "Model", "Hardware") and model in (
                    "",
                    platform.machine(),
                    platform.processor(),
                ):
                    model = value
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key in ("cpu family", "model") and key not in family_model:
                    family_model[key] = value
    except OSError:
        pass
    if len(family_model) == 2:
        model = f"{model} (family {family_model['cpu family']} model {family_model['model']})"
    return model, tuple(flag for flag in ISA_FLAGS if flag in flags)


def _gpus() -> tuple[str, ...]:
    """NVIDIA GPUs with driver version, memory and maximum SM clock, via nvidia-smi when it
    exists (no CUDA import)."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def _runtime_versions() -> dict[str, str]:
    versions = {}
    for package in RUNTIME_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


@lru_cache(maxsize=1)
def current_machine() -> Machine:
    cpu_model, isa = _cpu_info()
    return Machine(
        cpu_model=cpu_model,
        isa=isa,
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        memory_gib=round(psutil.virtual_memory().total / 2**30),
        os=platform.platform(terse=True),
        arch=platform.machine(),
        python=sys.version.split()[0],
        gpus=_gpus(),
        runtimes=_runtime_versions(),
    )
