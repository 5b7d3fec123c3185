"""Assembles `BENCHMARKS.md` from the tables the benchmark scripts wrote.

    python -m benchmarks.report [--published benchmarks/results] [--output BENCHMARKS.md]

Every table is quoted verbatim from `<published>/<script>/<table>.md`, which the script
wrote together with the exact command and the machine; this file adds only the prose
around them. A table that was not produced is listed as missing, never filled in.
"""

import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HEADER = """# Benchmarks and noise diagnostics

Everything below was produced by the scripts in `benchmarks/` and assembled by
`python -m benchmarks.report`; each table states the command that produced it and the
machine it ran on. No number in this file is typed by hand: to update a table, rerun its
command (each script resumes an interrupted run; `--tables NAME --force` recomputes one
table) and then `python -m benchmarks.report`.

Every script has `--help`, a `--quick` mode (tiny sizes; `tests/test_benchmarks.py` runs it in
CI) and `--seeds`, `--output-dir`, `--tables`, `--force`. Raw per-run records are kept as
`<table>.jsonl` next to the tables (not committed).

**Machine caveat.** The CPU tables were measured on a small shared development machine
(2 logical CPUs, TensorFlow limited to one intra-op thread, other jobs running at the same
time). Timings there are noisy: the optimizers are interleaved round-robin and medians are
reported so that background load hits all of them alike, but absolute times are not
representative of an unloaded machine, and the ratios are the meaningful part.
"""

SECTIONS = [
    (
        "Speed",
        ["speed/apply", "speed/step"],
        """What one `optimizer.apply` costs over the trainable variables of a large and a small model,
with and without XLA, next to a memory-traffic floor: the parameter-sized tensors an ideal
fused update must read and write. Plain SGD reads the gradient and the weights and writes
the weights (3 tensors); QSGLD reads the gradient a second time for the per-tensor norm of
its compensation term (4 tensors, so 4/3 of SGD); Adam moves 7 (7/3). The
"Gaussian SGLD" row is the noise QSGLD replaces, written with `keras.random.normal` and a
`SeedGenerator` (`benchmarks/optimizers.py: GaussianSGLD`).""",
    ),
    (
        "Quality on offline data",
        ["quality/lr", "quality/quality", "quality/ingredients", "quality/ablation"],
        """scikit-learn digits (MLP) and MNIST-1D (1-D CNN), several seeds, the same epoch budget for
every optimizer. The learning rate of each optimizer is chosen on a separate tuning seed by
the lowest final training loss (first table); no test data is used to choose it. The
ingredients table puts SGD, quantized SGD (QSGLD with the compensation off), QSGLD and
Gaussian SGLD at the same learning rate, so that each difference isolates one ingredient.""",
    ),
    (
        "Global optimization (the Langevin claim)",
        ["global_opt/global"],
        """Rastrigin, Ackley and Styblinski-Tang in 2, 10 and 100 dimensions, from the same random starts
for every method, with the exact gradient. Gaussian SGLD runs at the temperature
`Qp^-2 / (24 lr)` that the white-noise hypothesis assigns to QSGLD with the same `Qp`
(fixed or increasing), so any difference between the two rows is the difference between
rounding noise and the Gaussian noise it is supposed to mimic. Note the "zero increments"
column: QSGLD's rounding can only move a coordinate when its step is at least half a grid
cell, and the white-noise hypothesis needs steps of about a cell or more; at temperature
`T = Qp^-2 / (24 lr)` a step `lr |g|` spans `Qp lr |g|` cells, so the hypothesis can only
hold where `T` is below about `lr g^2 / 24`.""",
    ),
    (
        "Noise diagnostics",
        ["diagnostics/whitenoise", "diagnostics_mnist1d/whitenoise", "diagnostics/stationary", "double_well/double_well"],
        """The white-noise hypothesis (the rounding error is i.i.d. uniform with variance 1/12 cell^2)
measured during real training, per layer and epoch, and the stationary variance of a 1-D
quadratic against the formula `Qp^-2 / (12 (2 lr a - lr^2 a^2))` (paper.md s8, checks 1, 2
and 8). The floor rounding of the authors' code has a mean error of -1/2 cell, hence a
drift of `-Qp^-1 / 2` per coordinate and step; the drift column compares the accumulated
realised drift with that prediction.""",
    ),
    (
        "GPU",
        ["gpu/speed/apply", "gpu/speed/step", "gpu/cifar/cifar"],
        """`benchmarks/gpu.sh` runs the speed tables at GPU scale (both models, XLA and not, whole steps at
batch 128, every optimizer) and a short run of the paper's CIFAR protocol with QSGLD and SGD
(`benchmarks/cifar.py`; real CIFAR needs internet or `--data-dir`). Its tables appear here
once it has been run on a GPU machine and `benchmarks/results/gpu/` holds them.""",
    ),
]


def table_text(published, table, output):
    path = os.path.join(published, f"{table}.md")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read().rstrip() + "\n"
    base = os.path.relpath(os.path.dirname(os.path.abspath(path)), os.path.dirname(os.path.abspath(output)))
    # Images are written next to the table: point their links at that folder.
    lines = []
    for line in text.splitlines():
        if line.startswith("![") and "](" in line and "/" not in line.split("](", 1)[1]:
            name, target = line[2:].split("](", 1)
            line = f"![{name}]({base}/{target}"
        lines.append(line)
    return "\n".join(lines).replace("### ", "#### ", 1) + "\n"


def build(published, output):
    parts = [HEADER]
    missing = []
    for title, tables, intro in SECTIONS:
        parts.append(f"## {title}\n\n{intro}\n")
        found = False
        for table in tables:
            text = table_text(published, table, output)
            if text is None:
                missing.append(table)
                continue
            found = True
            parts.append(text)
        if not found:
            if tables[0].startswith("gpu/"):
                parts.append("_Not run yet: no GPU machine was available when these tables were made. "
                             "The script is ready: `benchmarks/gpu.sh --data-dir DIR`._\n")
            else:
                parts.append("_No table published yet: run the section's script without `--quick`._\n")
    with open(output, "w") as f:
        f.write("\n".join(parts))
    return output, missing


def main(argv=None):
    p = argparse.ArgumentParser(description="Assemble BENCHMARKS.md from the published tables.")
    p.add_argument("--published", default="benchmarks/results", help="folder of <script>/<table>.md")
    p.add_argument("--output", default="BENCHMARKS.md")
    args = p.parse_args(argv)
    output, missing = build(args.published, args.output)
    print(f"wrote {output}" + (f"; missing tables: {', '.join(missing)}" if missing else ""))
    return output


if __name__ == "__main__":
    main()
