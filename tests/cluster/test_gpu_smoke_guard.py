"""benchmarks/gpu_smoke.py on a machine without a CUDA GPU: a clear error before anything starts."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def test_gpu_smoke_without_cuda_fails_clearly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the path for machines without a CUDA GPU; this one has one")

    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_smoke.py"), "--work-dir", str(tmp_path / "w")],
                            cwd=REPO, capture_output=True, text=True, timeout=120)

    assert result.returncode == 2
    assert "torch sees no CUDA GPU" in result.stderr
    assert not (tmp_path / "w").exists()
