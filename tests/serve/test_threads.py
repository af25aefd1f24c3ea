"""Model threads follow the container's CPU quota (cgroup v2 and v1 files written here), never the node."""

from __future__ import annotations

from pathlib import Path

import pytest

from dinotune.serve import threads
from dinotune.serve.threads import available_cpus, cgroup_cpu_limit, cpu_threads


def _proc(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc_self_cgroup"
    path.write_text(text)
    return path


def _write(path: Path, files: dict[str, str]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)


def test_cgroup_v2_quota_of_the_container_root(tmp_path: Path) -> None:
    _write(tmp_path / "fs", {"cpu.max": "200000 100000\n"})
    assert cgroup_cpu_limit(tmp_path / "fs", _proc(tmp_path, "0::/\n")) == 2.0


def test_cgroup_v2_unlimited_and_nested_tightest_wins(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    _write(root, {"cpu.max": "max 100000\n"})
    proc = _proc(tmp_path, "0::/kubepods/pod1/ctr\n")
    assert cgroup_cpu_limit(root, proc) is None
    _write(root / "kubepods" / "pod1", {"cpu.max": "150000 100000\n"})
    _write(root / "kubepods" / "pod1" / "ctr", {"cpu.max": "max 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 1.5
    _write(root / "kubepods", {"cpu.max": "50000 100000\n"})
    assert cgroup_cpu_limit(root, proc) == 0.5


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "fs"
    proc = _proc(tmp_path, "12:cpu,cpuacct:/docker/abc\n11:memory:/docker/abc\n")
    _write(root / "cpu,cpuacct", {"cpu.cfs_quota_us": "-1\n", "cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, proc) is None
    _write(root / "cpu,cpuacct" / "docker" / "abc", {"cpu.cfs_quota_us": "300000\n", "cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, proc) == 3.0


def test_garbage_and_missing_files_mean_no_limit(tmp_path: Path) -> None:
    _write(tmp_path / "fs", {"cpu.max": "lots of cpus\n"})
    assert cgroup_cpu_limit(tmp_path / "fs", _proc(tmp_path, "garbage")) is None
    assert cgroup_cpu_limit(tmp_path / "nothing", tmp_path / "missing") is None


def test_threads_are_the_configured_value_else_the_quota_share(monkeypatch: pytest.MonkeyPatch) -> None:
    assert available_cpus() >= 1
    monkeypatch.setattr(threads, "available_cpus", lambda: 64)  # a big node
    assert cpu_threads(3, limit=2.0) == 3  # the config wins
    assert cpu_threads(None, limit=2.0) == 2  # the pod's limit, not the node's 64 cores
    assert cpu_threads(None, limit=2.5) == 2 and cpu_threads(None, limit=0.5) == 1
    assert cpu_threads(None, workers=2, limit=4.0) == 2  # workers share the quota
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert cpu_threads(None) == 64  # no quota anywhere: the CPUs this process may use


def test_the_server_sizes_onnx_runtime_to_the_quota(onnx_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dinotune.serve import ServeConfig, create_app
    from tests.serve.helpers import running

    monkeypatch.setattr(threads, "available_cpus", lambda: 64)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 3.0)
    for config, expected in [(ServeConfig(), 3), (ServeConfig(workers=3), 1), (ServeConfig(threads=2), 2)]:
        app = create_app(onnx_export, config)
        with running(app):
            session = app.state.server.engine.model.session
            assert session.get_session_options().intra_op_num_threads == expected, config
