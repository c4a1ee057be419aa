"""Suite-wide settings, applied before any test module imports the code.

Flows in tests run on Prefect's embedded (per-process) server, or on the pipelines tests' harness,
unless a test is about the shared local server itself (``tests/pipelines/test_prefect_api.py``,
the demo): a test run must not leave background servers behind.
"""

from __future__ import annotations

import os

os.environ.setdefault("NEUROSERVE_PREFECT_API", "ephemeral")
