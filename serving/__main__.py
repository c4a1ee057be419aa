"""``python -m serving [flags]``: run the inference server (no torch, no Prefect needed)."""

import sys

from serving.cli import serve_main

if __name__ == "__main__":
    sys.exit(serve_main())
