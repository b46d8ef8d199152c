"""Wall-clock time and peak memory of one call, honest on both devices.

- CUDA: `torch.cuda.synchronize()` and `reset_peak_memory_stats()` before the call, CUDA events
  around it, `synchronize()` after. peak_mem_mb = `torch.cuda.max_memory_allocated()` during the
  call (absolute: it includes the weights and anything already allocated, not only what the
  method adds).
- CPU: `time.perf_counter()` around the call. peak_mem_mb is the process's peak resident set
  size in MB: reset before each call through /proc/self/clear_refs (Linux >= 4.0) and read from
  VmHWM afterwards, so it is the peak *during that call* (mem_kind "cpu-peak-rss-during-call");
  where the reset is not allowed it falls back to `resource.getrusage().ru_maxrss`, the process's
  peak RSS so far (mem_kind "cpu-peak-rss-process-so-far", monotonic over the run). Either way it
  counts the whole process (interpreter, torch, weights, allocator caches), not one tensor set.
"""
from __future__ import annotations

import platform
import resource
import time
from typing import Any, Optional

import torch

from harness.core.device import cpu_name


def _rss_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _vm_hwm_mb() -> Optional[float]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _ru_maxrss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if platform.system() != "Darwin" else r / 2**20  # KB on Linux, bytes on macOS


class Clock:
    """start / mark / stop around a call; `elapsed(mark)` is seconds since `start`."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self._t0: Any = None
        self._rss_ok = False
        self.mem_kind = "cuda-max-allocated" if self.cuda else "cpu-peak-rss-during-call"

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._t0 = torch.cuda.Event(enable_timing=True)
            self._t0.record()
        else:
            self._rss_ok = _rss_reset()
            self.mem_kind = "cpu-peak-rss-during-call" if self._rss_ok else "cpu-peak-rss-process-so-far"
            self._t0 = time.perf_counter()

    def mark(self):
        """A time stamp, resolved with `elapsed` after `stop` (a recorded event on CUDA)."""
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def stop(self):
        """(end mark, peak_mem_mb); synchronises on CUDA so every mark can be read."""
        end = self.mark()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _vm_hwm_mb() if self._rss_ok else None
            peak = hwm if hwm is not None else _ru_maxrss_mb()
        return end, peak

    def elapsed(self, mark) -> float:
        if self.cuda:
            return self._t0.elapsed_time(mark) / 1000.0
        return mark - self._t0

    def threads(self) -> int:
        return torch.get_num_threads()

    def device_name(self) -> str:
        if self.cuda:
            return torch.cuda.get_device_name(self.device)
        return cpu_name()
