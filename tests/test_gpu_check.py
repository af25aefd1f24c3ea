"""benchmarks/gpu_check.sh works before anyone has a GPU to run it on: its dry run (collection of the
`cuda` tests, a tiny extraction benchmark on the CPU) passes and writes its summary outside results/."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "DINOTUNE_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    summary = re.search(r"summary in (\S+gpu_check\.json)", out.stdout)
    assert summary, out.stdout[-2000:]
    path = Path(summary.group(1))
    assert REPO / "benchmarks" / "results" not in path.parents  # a dry run never touches real results
    report = json.loads(path.read_text())
    assert report["dry_run"] is True and report["failed"] is False
    assert [s["step"] for s in report["steps"]] == [
        "collect-cuda-tests",
        "embed-tiny-cpu",
        "compile-gpu-benchmark",
    ]
    assert "6 tests collected" in out.stdout  # every cuda test is found (and none silently renamed away)
    embed = json.loads((path.parent / "embed_vit_test16.json").read_text())
    assert embed["summary"]["peak_gflops"]["median"] > 0 and embed["automatic_choice_on_one_batch"]["engine"]
