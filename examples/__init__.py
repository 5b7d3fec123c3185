"""The example scripts, importable from the repository root: `python -m examples.fit`."""
