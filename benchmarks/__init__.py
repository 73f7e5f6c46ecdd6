"""The edgeship benchmark harness; run ``python benchmarks/run.py`` (see run.py)."""
