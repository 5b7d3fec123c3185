"""Benchmarks and noise diagnostics for keras-qsgld (not part of the public API).

The scripts run as modules from the repository root, e.g. `python -m benchmarks.speed --quick`:
`speed` (on every installed Keras backend, each in a process of its own), and the
TensorFlow-backend scripts `quality`, `global_opt`, `langevin.diagnostics`, `langevin.double_well`,
`cifar` and `eager_xla`. Each has `--help` and `--quick` (the CI smoke mode); the full modes
write the Markdown tables published in `BENCHMARKS.md`, which `python -m benchmarks.report`
assembles. A bad argument ends a script with one line on stderr (exit code 2); Ctrl-C with one
line that says how to resume (exit code 130).
"""

from experiments import require_extra

require_extra("benchmarks")
