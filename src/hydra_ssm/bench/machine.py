"""What a measurement ran on, and how much memory it needed: shared by both benchmarks and the training report."""

from __future__ import annotations

import os
import platform

import torch


def machine_description(device="cpu") -> str:
    """One line: the CPU model (and the GPU for a CUDA ``device``), cores, torch threads, torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    if torch.device(device).type == "cuda":
        cpu = f"{torch.cuda.get_device_name()} (host {cpu})"
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def _proc_status_bytes(field: str) -> int:
    """VmRSS (current) or VmHWM (peak) of this process; both belong to the
    address space, so unlike ru_maxrss they do not inherit the parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


class PeakMemory:
    """Growth of peak memory in bytes from construction to `growth`: on CUDA ``torch.cuda.max_memory_allocated``
    over the allocation at the start; on CPU the peak resident size (VmHWM) over the resident size at the start
    (VmRSS), i.e. what the measured work needed on top of the weights and inputs already built.

    A CPU peak is per process and never goes down: measure in a fresh process (both benchmarks start one per
    configuration) so that an earlier, larger peak cannot hide a later one.
    """

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _proc_status_bytes("VmRSS")

    def growth(self) -> int:
        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.base
        return _proc_status_bytes("VmHWM") - self.base
