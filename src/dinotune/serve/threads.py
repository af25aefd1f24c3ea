"""How many CPU threads the model may use: the config's `threads`, else the container's CPU quota.

ONNX Runtime and torch size their intra-op pools to the node's cores (and ONNX Runtime does not read
OMP_NUM_THREADS), so a pod limited to 2 CPUs on a 64-core node would run 64 threads that the kernel
throttles. The quota comes from the cgroup: v2 `cpu.max` ("QUOTA PERIOD" or "max PERIOD") of the
process's cgroup and every parent (the tightest wins), v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`.
Without a quota the CPUs this process may run on (its affinity, e.g. `docker --cpuset-cpus`) count.
Several workers on one quota share it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _v2_quota(folder: Path) -> float | None:
    text = _read(folder / "cpu.max")
    if not text:
        return None
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(folder: Path) -> float | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
    try:
        q, p = float(quota or "-1"), float(period or "0")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroups(proc_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of this process, from /proc/self/cgroup."""
    v2 = v1 = None
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "cpu" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _with_parents(root: Path, relative: str | None) -> list[Path]:
    """root/relative and each parent up to root (a container sees its own cgroup as the root)."""
    folders = [root]
    if relative:
        parts = [p for p in relative.strip("/").split("/") if p and p != ".."]
        folders += [root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
    return folders


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """The CPU quota in CPUs (e.g. 2.0, 0.5), or None where no cgroup sets one."""
    v2, v1 = _own_cgroups(proc_cgroup)
    quotas = [q for f in _with_parents(root, v2) if (q := _v2_quota(f)) is not None]
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / controller
        quotas += [q for f in _with_parents(base, v1) if (q := _v1_quota(f)) is not None]
    return min(quotas) if quotas else None


def available_cpus() -> int:
    """CPUs this process may run on (its affinity), the node's count only where affinity is unknown."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads(configured: int | None = None, workers: int = 1, limit: float | None = None) -> int:
    """Threads for one worker's model: `configured` if given, else its share of the quota (at least 1)."""
    if configured:
        return configured
    cpus = float(available_cpus())
    quota = cgroup_cpu_limit() if limit is None else limit
    if quota is not None:
        cpus = min(cpus, quota)
    return max(1, math.floor(cpus / max(1, workers)))
