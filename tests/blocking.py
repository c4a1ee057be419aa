"""Run a Python entry point in a fresh interpreter where chosen packages cannot be imported.

Import hygiene is a promise (listing, predicting and serving never load torch or the training
code); the only honest check is a process in which those imports fail loudly.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: What a listing, a prediction or a server never needs.
HEAVY = ("torch", "sklearn", "scipy", "training", "prefect", "matplotlib", "onnxscript")
#: The training package's light surface, which the CLI reads its choices and defaults from:
#: the spec, the data-set catalog and the errors (stdlib only). Its code (data, models, loop,
#: metrics, export) stays blocked.
ALLOWED = ("training", "training.spec", "training.catalog", "training.errors")

_PRELUDE = """
import sys
BLOCKED = {blocked!r}
ALLOWED = {allowed!r}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED and name not in ALLOWED:
            raise ImportError(f'{{name}} is made unimportable for this check')
sys.meta_path.insert(0, Block())
sys.argv = {argv!r}
{main}
"""


def run_blocked(
    main: str,
    argv: list[str],
    blocked: Iterable[str] = HEAVY,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``main`` (Python source calling the entry point) with ``blocked`` unimportable."""
    code = _PRELUDE.format(blocked=tuple(blocked), allowed=ALLOWED, argv=argv, main=main)
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        timeout=timeout,
        check=False,
    )


#: The ``neuroserve`` console script's entry point, as source for :func:`run_blocked`.
NEUROSERVE = "from pipelines.cli import main\nmain()"


def run_together(code: str, n: int, timeout: float = 240) -> list[tuple[int, str, str]]:
    """Start ``n`` interpreters running ``code`` at once (a race on first use is the point);
    return each one's (exit code, stdout, stderr)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for _ in range(n)
    ]
    results = [p.communicate(timeout=timeout) for p in procs]
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, results, strict=True)]
