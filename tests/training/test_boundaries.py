"""training/ must stay importable without Prefect, MLflow or gRPC (docs/design.md layout rule)."""

from __future__ import annotations

import subprocess
import sys


def test_training_never_imports_orchestration_or_transport() -> None:
    code = (
        "import sys, training, training.export, training.baselines, training.run\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'prefect', 'mlflow', 'grpc', 'pipelines', 'serving'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
