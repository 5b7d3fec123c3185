"""The summary plots of the documentation site, drawn from the published tables.

    python -m benchmarks.plots [--published benchmarks/results]

Reads the `apply.csv` tables that `benchmarks.speed` wrote (`speed_compiled`, `speed_xeon`,
`speed_torch`) and draws `speed/speed_ratios.png` under `--published`: what one QSGLD
update costs next to SGD's, and one QAdam update next to Adam's, on ResNet50, per backend,
mode and host. No number is typed here: each bar is a ratio of two medians of one table,
measured side by side in one run.
"""

import csv
import os

from matplotlib.figure import Figure

from benchmarks import common
from experiments import cli

# (table folder, host, backend, mode, label): the bars, in order.
BARS = (
    (
        "speed_compiled",
        "AMD EPYC",
        "tensorflow (cpu)",
        "xla",
        "TensorFlow XLA\nAMD EPYC",
    ),
    (
        "speed_xeon",
        "Intel Xeon",
        "tensorflow (cpu)",
        "xla",
        "TensorFlow XLA\nIntel Xeon",
    ),
    ("speed_compiled", "AMD EPYC", "jax (cpu)", "jit", "jax.jit\nAMD EPYC"),
    ("speed_xeon", "Intel Xeon", "jax (cpu)", "jit", "jax.jit\nIntel Xeon"),
    (
        "speed_torch",
        "Intel Xeon",
        "torch (cpu)",
        "compiled",
        "torch.compile\nIntel Xeon",
    ),
    (
        "speed_torch",
        "Intel Xeon",
        "torch (cpu)",
        "eager",
        "PyTorch eager\nIntel Xeon",
    ),
)
MODEL = "keras.applications.ResNet50"
PAIRS = (("qsgld", "sgd", "QSGLD / SGD"), ("qadam", "adam", "QAdam / Adam"))


def medians(path, backend, mode):
    """`{optimizer: median ms}` of the ResNet50 rows of one apply table."""
    out = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if (
                row["backend"] == backend
                and row["mode"] == mode
                and row["model"].startswith(MODEL)
            ):
                out[row["optimizer"]] = float(row["median ms"])
    return out


def speed_ratios(published):
    """`[(label, {pair label: ratio})]` for the bars whose table exists."""
    bars = []
    for folder, _, backend, mode, label in BARS:
        path = os.path.join(published, folder, "apply.csv")
        if not os.path.isfile(path):
            raise cli.UserError(
                f"{path} is missing: run benchmarks.speed for it first"
            )
        ms = medians(path, backend, mode)
        bars.append(
            (
                label,
                {
                    name: ms[a] / ms[b]
                    for a, b, name in PAIRS
                    if a in ms and b in ms
                },
            )
        )
    return bars


def draw_speed(bars, path):
    fig = Figure(figsize=(9, 4.2))
    ax = fig.add_subplot()
    width = 0.38
    for k, (_, _, name) in enumerate(PAIRS):
        xs = [i + (k - 0.5) * width for i in range(len(bars))]
        ys = [ratios.get(name, float("nan")) for _, ratios in bars]
        rects = ax.bar(xs, ys, width, label=name)
        ax.bar_label(rects, fmt="%.2f", fontsize=8, padding=2)
    ax.axhline(1.0, color="black", linewidth=0.8)
    # In the legend, not beside the line: a label there ran into the bars' own labels.
    ax.axhline(
        4 / 3,
        color="grey",
        linestyle="--",
        linewidth=0.8,
        label="QSGLD's traffic floor, 1.33",
    )
    ax.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    ax.set_ylabel("cost of one update, ratio")
    ax.set_title(
        "One optimizer update on ResNet50 (25.6M weights), CPU, 2 cores"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    parser = cli.ArgumentParser(
        prog=cli.script_name(), description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--published",
        default=os.path.join("benchmarks", "results"),
        help="the folder of the published tables (default %(default)s)",
    )
    args = parser.parse_args(argv)
    path = draw_speed(
        speed_ratios(args.published),
        os.path.join(args.published, "speed", "speed_ratios.png"),
    )
    common.log(f"wrote {path}")


if __name__ == "__main__":
    common.run_benchmark(main, resumable=False)
