"""`python -m pipelines` is `neuroserve` (for environments without the console script)."""

from pipelines.cli import main

main()
