"""What every benchmark shares: arguments, progress, resumable results, timing and tables.

* `parse_args` gives each script the same flags: `--quick`, `--seeds`, `--output-dir`,
  `--tables` (run only some tables), `--force` (recompute cached results) and `--machine`.
* `ResultStore` keeps one JSON-lines file per table in the output directory, keyed by the
  run (optimizer, seed, ...): an interrupted run resumes where it stopped, and a table can be
  rerun alone with `--tables NAME --force`.
* `time_interleaved` times several callables round-robin, in a fresh random order each
  round, so that a noisy machine slows every candidate alike; report medians.
* `write_table` writes `NAME.md` (title, the exact command, the machine, the table, notes)
  and `NAME.csv`. `benchmarks/report.py` assembles the `.md` files into `BENCHMARKS.md`.
"""

import argparse
import csv
import datetime
import json
import math
import os
import platform
import random
import shlex
import sys
import time

DEFAULT_SEEDS = 5


# -- arguments -------------------------------------------------------------------------
def parser(description, tables, default_output):
    """An `ArgumentParser` with the shared flags; scripts add their own before `parse_args`."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: proves the script works (CI)")
    p.add_argument(
        "--seeds",
        default=str(DEFAULT_SEEDS),
        help="number of seeds (0..N-1) or a comma-separated list of seeds",
    )
    p.add_argument("--output-dir", default=default_output, help="where tables and raw results go")
    p.add_argument(
        "--tables",
        default="all",
        help=f"comma-separated subset of tables to run: {', '.join(tables)}",
    )
    p.add_argument("--force", action="store_true", help="recompute results already stored")
    p.add_argument("--machine", default=None, help="machine label for the tables (default: probed)")
    p.set_defaults(_all_tables=tuple(tables))
    return p


def finish_args(args):
    """Validates and normalises the shared flags (seeds list, table subset)."""
    args.seed_list = parse_seeds(args.seeds)
    if args.tables == "all":
        args.table_list = list(args._all_tables)
    else:
        args.table_list = [t.strip() for t in args.tables.split(",") if t.strip()]
        unknown = [t for t in args.table_list if t not in args._all_tables]
        if unknown:
            raise ValueError(
                f"Argument `--tables` must name tables among {args._all_tables}. "
                f"Received: --tables={args.tables!r}"
            )
    if args.machine is None:
        args.machine = machine_description()
    args.command = command_line()
    os.makedirs(args.output_dir, exist_ok=True)
    return args


def parse_seeds(text):
    """`"5"` -> [0, 1, 2, 3, 4]; `"3,7"` -> [3, 7]."""
    text = str(text).strip()
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        seeds = []
    if not seeds:
        raise ValueError(
            "Argument `--seeds` must be a positive count or a comma-separated list of integers. "
            f"Received: --seeds={text!r}"
        )
    return seeds


def command_line():
    """The command that is running, as a user would type it from the repository root."""
    argv = list(sys.argv)
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        head = ["python", "-m", spec.name]
    else:
        head = ["python", os.path.relpath(argv[0]) if argv and argv[0] else "?"]
    return " ".join(shlex.quote(a) for a in head + argv[1:])


def machine_description():
    """CPU model and count, GPUs, and library versions: the "named machine" of every table."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f"{cpu}, {os.cpu_count()} logical CPUs"]
    try:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(details.get("device_name", gpu.name))
        parts.append("GPU: " + (", ".join(names) if names else "none"))
        import keras

        parts.append(f"TensorFlow {tf.__version__}, Keras {keras.__version__}")
    except Exception:  # pragma: no cover - reporting only
        pass
    threads = os.environ.get("TF_NUM_INTRAOP_THREADS")
    if threads:
        parts.append(f"TF_NUM_INTRAOP_THREADS={threads}")
    return "; ".join(parts)


# -- progress ----------------------------------------------------------------------------
_START = time.time()


def log(message):
    """One progress line with the elapsed time, flushed at once."""
    print(f"[{time.time() - _START:7.1f}s] {message}", flush=True)


# -- resumable results ------------------------------------------------------------------
class ResultStore:
    """Records of one table, one JSON object per line, looked up by a key.

    `get(key)` returns a stored record (None if absent); `put(key, record)` appends at
    once, so an interrupted run keeps everything finished before the interrupt. `force=True`
    at construction empties the file; `get(key, force=True)` ignores records that this
    process did not compute (to recompute one table of a file shared by several).
    """

    def __init__(self, output_dir, table, force=False):
        self.path = os.path.join(output_dir, f"{table}.jsonl")
        self.records = {}
        self.fresh = set()  # keys computed by this process
        if force and os.path.exists(self.path):
            os.remove(self.path)
        if os.path.exists(self.path):
            with open(self.path) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        item = json.loads(line)
                        self.records[item["key"]] = item["record"]

    @staticmethod
    def make_key(**parts):
        return "|".join(f"{k}={parts[k]}" for k in sorted(parts))

    def get(self, key, force=False):
        """The stored record, or None; with `force`, None unless computed by this process."""
        if force and key not in self.fresh:
            return None
        return self.records.get(key)

    def put(self, key, record):
        self.records[key] = record
        self.fresh.add(key)
        with open(self.path, "a") as f:
            f.write(json.dumps({"key": key, "record": record}, default=float) + "\n")
        return record


# -- timing ------------------------------------------------------------------------------
def time_interleaved(functions, repeats, warmup=1, seed=0, progress=None):
    """Times each callable `repeats` times, round-robin in a fresh random order each round.

    Args:
        functions: dict name -> callable that runs the work once and blocks until it is done.
        repeats: timed calls per callable.
        warmup: untimed calls per callable first (compilation, allocation).
        progress: optional callable(message) for progress lines.

    Returns:
        dict name -> list of seconds, one per timed call.
    """
    if repeats < 1:
        raise ValueError(f"Argument `repeats` must be >= 1. Received: repeats={repeats!r}")
    names = list(functions)
    for name in names:
        for _ in range(warmup):
            functions[name]()
        if progress:
            progress(f"warmed up {name}")
    times = {name: [] for name in names}
    order = random.Random(seed)
    for r in range(repeats):
        order.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - t0)
        if progress:
            progress(f"round {r + 1}/{repeats} done")
    return times


def median(values):
    values = sorted(v for v in values if v is not None and not math.isnan(v))
    if not values:
        return float("nan")
    n = len(values)
    mid = n // 2
    return values[mid] if n % 2 else 0.5 * (values[mid - 1] + values[mid])


def mean_std(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, float("nan")
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var)


def fmt(x, digits=3):
    """A compact number for a table cell ("nan" stays visible)."""
    if x is None:
        return "-"
    if isinstance(x, str):
        return x
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    if math.isnan(x):
        return "nan"
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def fmt_pm(values, digits=3, scale=1.0):
    m, s = mean_std([v * scale for v in values])
    return f"{fmt(m, digits)} ± {fmt(s, 2)}"


# -- tables ------------------------------------------------------------------------------
def markdown_table(headers, rows):
    lines = ["| " + " | ".join(str(h) for h in headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        lines.append("| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |")
    return "\n".join(lines)


def write_table(args, name, title, headers, rows, notes=(), extra_markdown=""):
    """Writes `NAME.md` (with command, machine and date) and `NAME.csv` into the output dir."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    md = [f"### {title}", ""]
    md.append(f"Command: `{args.command}`" + ("  (quick mode: smoke test only)" if args.quick else ""))
    md.append("")
    md.append(f"Machine: {args.machine}; run {date}.")
    md.append("")
    md.append(markdown_table(headers, rows))
    md.append("")
    for note in notes:
        md.append(f"* {note}")
    if notes:
        md.append("")
    if extra_markdown:
        md.append(extra_markdown)
        md.append("")
    path = os.path.join(args.output_dir, f"{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(args.output_dir, f"{name}.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        for row in rows:
            writer.writerow(row)
    log(f"wrote {path}")
    return path


def setup_environment():
    """Quiet TensorFlow and the TF backend, set before keras is imported."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def quiet_tensorflow():
    """Silences TensorFlow's Python logger (retracing warnings of the per-optimizer functions)."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
