"""Peak memory of a piece of work, measured the way each device allows.

On CUDA the caching allocator keeps exact statistics, so the work runs in process
between `torch.cuda.reset_peak_memory_stats` and `torch.cuda.max_memory_allocated`.
On the CPU the only honest figure is the process's resident set size (RSS). Each
measurement runs in a fresh ``spawn`` child so that no other variant's heap, freed but
still resident, is reused and hidden; the child returns free heap pages to the kernel,
resets its peak RSS where Linux allows (``/proc/self/clear_refs``; otherwise the peak
counts from process start) and reports the peak RSS during the work (``VmHWM``, the
counter behind ``ru_maxrss``) minus the RSS just before it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import resource
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import psutil
import torch

__all__ = ["current_rss_bytes", "peak_bytes", "peak_rss_bytes", "run_in_fresh_processes"]


def current_rss_bytes() -> int:
    """Resident set size now."""
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """Highest RSS since `_reset_peak_rss` (``VmHWM``), else since process start (``ru_maxrss``).

    ``ru_maxrss`` reads the same high-water mark but also keeps the mark of any thread
    that has exited, which no reset clears: one native thread ending after imports
    would pin it above what a light meta-step needs. psutil is no help: it has no peak RSS on Linux.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _release_free_heap() -> None:
    """Give freed heap pages back to the kernel (glibc), so that reusing them shows in RSS."""
    gc.collect()
    with contextlib.suppress(AttributeError, OSError):  # not glibc: freed pages may stay resident
        ctypes.CDLL(None).malloc_trim(0)


def _reset_peak_rss() -> None:
    """Restart ``VmHWM`` from the current RSS (Linux >= 4.0); where not allowed it keeps counting."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
        clear_refs.write("5")


def peak_bytes(work: Callable[[], object], device: torch.device) -> int:
    """Memory ``work`` needs above what was in use just before it.

    On CUDA: peak allocated bytes. On the CPU: peak RSS; run it in a fresh process (see
    `run_in_fresh_processes`), since memory freed earlier but still resident would hide
    part of the work's needs.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        work()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_free_heap()
    _reset_peak_rss()
    before = current_rss_bytes()
    work()
    return max(0, peak_rss_bytes() - before)


def _limit_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def run_in_fresh_processes(
    fn: Callable[..., Any], arguments: Iterable[tuple[Any, ...]], *, workers: int = 1
) -> list[Any]:
    """``[fn(*args) for args in arguments]``, each call in its own new ``spawn`` process.

    ``fn`` must be importable (module level). Several workers may run at once (RSS is
    per process, so they do not disturb each other's figures); they share torch's
    threads between them, since oversubscribed cores slow every step down many times.
    """
    context = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_limit_threads,
        initargs=(threads,),
        max_tasks_per_child=1,
    ) as pool:
        futures = [pool.submit(fn, *args) for args in arguments]
        return [future.result() for future in futures]
