"""Which torch device a run uses, with one error message for a missing GPU, and which CPU this is."""
from __future__ import annotations

import os
import platform

import torch


def device_name(name: str) -> str:
    """`name` when it names a device a run can use (cpu, cuda, cuda:N, auto), whether or not this
    machine has it (a sweep's driver names its workers' device); else a ValueError."""
    if name == "auto":
        return name
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use cpu, cuda, cuda:N or auto")
    return name


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda when torch sees one, else cpu; "cuda..." without CUDA is a ValueError."""
    if device_name(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device (use --device cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s) (use cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1})")
    return dev


def cpu_name() -> str:
    """This machine's CPU model, its CPU count and the instruction set torch's kernels use here
    ("Intel(R) Xeon(R) Processor (2 cpus, AVX512)"). float32 kernels sum in an order that depends
    on these, so bit-for-bit results hold only between machines that share them."""
    name = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cpus, {torch.backends.cpu.get_cpu_capability()})"
