"""Benchmarks and noise diagnostics for keras-qsgld (not part of the public API).

Each script (`speed`, `quality`, `global_opt`, `diagnostics`) runs with `--help`, `--quick`
(the CI smoke mode) and full modes that write the Markdown tables published in
`BENCHMARKS.md` (assembled by `benchmarks/report.py`). See `BENCHMARKS.md`.
"""
