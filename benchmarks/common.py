"""What every benchmark shares: arguments, progress, resumable results, timing and tables.

* `parser` and `finish_args` give each script the same flags: `--quick`, `--seeds`,
  `--output-dir`, `--tables` (run only some tables), `--force` (recompute cached results)
  and `--machine`.
* `ResultStore` keeps one JSON-lines file per table in the output directory, keyed by the
  run (optimizer, seed, ...): an interrupted run resumes where it stopped, and a table can be
  rerun alone with `--tables NAME --force`.
* `time_interleaved` times several callables round-robin, in a fresh random order each
  round, so that a noisy machine slows every candidate alike; report medians.
* `write_table` writes `NAME.md` (title, the exact command, the machine, the table, notes)
  and `NAME.csv`. `benchmarks/report.py` assembles the `.md` files into `BENCHMARKS.md`.
* `run_benchmark(main)` runs a script as a command through the scripts' one command-line kit
  (`experiments.cli`): a user error (`cli.UserError`: bad arguments, data not available)
  ends with one line on stderr and exit code 2, Ctrl-C with one line that says how to
  resume and exit code 130.

This module imports neither Keras nor a backend: `benchmarks.speed` picks the Keras backend
after parsing its arguments, and runs each backend in a process of its own.
"""

import csv
import datetime
import importlib
import importlib.metadata
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import time

import numpy as np

from experiments import cli, import_tensorflow_quietly

DEFAULT_SEEDS = 5
# The Keras backends and the package each one is.
BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}
BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def run_benchmark(main, resumable=True):
    """Runs `main()` as the command `python -m benchmarks.NAME` and exits with its code
    (`experiments.cli.run_script`): a user error is one line and exit code 2; Ctrl-C is one
    line that says how to rerun (`resumable`: finished results are kept) and exit code 130."""
    rerun = cli.command_line(
        drop=("--force",)
    )  # --force would recompute the kept results
    interrupted = (
        f"finished results are kept: rerun `{rerun}` to resume"
        if resumable
        else f"nothing was saved: rerun `{rerun}` to start again"
    )
    sys.exit(cli.run_script(main, interrupted=interrupted))


def use_backend(script, backend, needs):
    """Sets `KERAS_BACKEND=backend` before Keras is imported, whatever it said, and imports
    TensorFlow (the data pipelines are `tf.data` on every backend). Raises `ImportError`
    if this process already runs Keras on another backend (`script`: the module's name and
    `needs`: why it wants `backend`, for the message).

    TensorFlow is imported with stderr closed (`experiments.import_tensorflow_quietly`): its
    start-up lines would precede a script's one-line error message.
    """
    keras = sys.modules.get("keras")
    if keras is not None and keras.backend.backend() != backend:
        raise ImportError(
            f"{script} {needs}, but this process already runs Keras on "
            f"{keras.backend.backend()!r}: run it in a process of its own."
        )
    os.environ["KERAS_BACKEND"] = backend
    import_tensorflow_quietly()


def use_tensorflow_backend(script):
    """For the scripts that run TensorFlow code (`tf.function`, `tf.GradientTape`, `tf.data`):
    call before Keras is imported. See `use_backend`."""
    use_backend(
        script,
        "tensorflow",
        "runs TensorFlow code and needs the TensorFlow backend",
    )


# -- arguments -------------------------------------------------------------------------
def parser(description, tables, default_output):
    """An `ArgumentParser` with the shared flags; scripts add their own before `parse_args`."""
    p = cli.ArgumentParser(
        prog=cli.script_name(),
        description=description,
        formatter_class=cli.HelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes: proves the script works (CI)",
    )
    p.add_argument(
        "--seeds",
        default=str(DEFAULT_SEEDS),
        help="number of seeds (0..N-1) or a comma-separated list of seeds",
    )
    p.add_argument(
        "--output-dir",
        default=default_output,
        help="where tables and raw results go",
    )
    p.add_argument(
        "--tables",
        default="all",
        help=f"comma-separated subset of tables to run: {', '.join(tables)}",
    )
    p.add_argument(
        "--force", action="store_true", help="recompute results already stored"
    )
    p.add_argument(
        "--machine",
        default=None,
        help="machine label for the tables (default: probed)",
    )
    p.set_defaults(_all_tables=tuple(tables))
    return p


def finish_args(args, backends=None):
    """Validates and normalises the shared flags (seeds list, table subset); `backends`: the
    Keras backends the run uses, for the machine description (default: `KERAS_BACKEND`)."""
    args.seed_list = parse_seeds(args.seeds)
    if args.tables == "all":
        args.table_list = list(args._all_tables)
    else:
        args.table_list = [
            t.strip() for t in args.tables.split(",") if t.strip()
        ]
        unknown = [t for t in args.table_list if t not in args._all_tables]
        if unknown:
            raise cli.UserError(
                f"Argument `--tables` must name tables among {args._all_tables}. "
                f"Received: --tables={args.tables!r}"
            )
    if args.machine is None:
        args.machine = machine_description(backends)
    args.command = cli.command_line()
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
        raise cli.UserError(
            "Argument `--seeds` must be a positive count or a comma-separated list of integers. "
            f"Received: --seeds={text!r}"
        )
    return seeds


def machine_description(backends=None):
    """CPU model and count, GPUs, and library versions: the "named machine" of every table.

    It imports no backend (a process must not hold TensorFlow and PyTorch both): versions
    come from the installed packages' metadata, GPUs from `nvidia-smi`.
    """
    info = {}  # the first processor's entries
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    vector = (
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    )
    if vector:
        cpu += f" ({vector})"
    parts = [
        f"{cpu}, {os.cpu_count()} logical CPUs",
        f"memory {memory_bandwidth():.1f} GB/s (NumPy z = x + y on 64 MiB float32 arrays, median of 9)",
        f"GPU: {gpu_names()}",
    ]
    if backends is None:
        backends = [os.environ.get("KERAS_BACKEND", "tensorflow")]
    versions = [
        f"{BACKEND_NAMES.get(b, b)} {package_version(BACKEND_PACKAGES.get(b, b))}"
        for b in backends
    ]
    parts.append(", ".join(versions + [f"Keras {package_version('keras')}"]))
    for variable in (
        "TF_NUM_INTRAOP_THREADS",
        "OMP_NUM_THREADS",
        "XLA_FLAGS",
    ):  # thread limits and XLA's settings (e.g. its CPU scheduler), where set
        if os.environ.get(variable):
            parts.append(f"{variable}={os.environ[variable]}")
    return "; ".join(parts)


def memory_bandwidth(mib=64, repeats=9):
    """GB/s of `z = x + y` over float32 arrays of `mib` MiB (3 streams: read x and y,
    write z), the median of `repeats`: the memory a machine gives a streaming kernel, to
    set a table's absolute times against."""
    n = mib * (1 << 20) // 4
    x, y, z = (np.ones(n, np.float32) for _ in range(3))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.add(x, y, out=z)
        times.append(time.perf_counter() - start)
    return 3 * 4 * n / median(times) / 1e9


def package_version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def gpu_names():
    """The GPUs `nvidia-smi` lists, or "none"."""
    if shutil.which("nvidia-smi") is None:
        return "none (no nvidia-smi)"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "none (nvidia-smi failed)"
    names = [line.strip() for line in out.splitlines() if line.strip()]
    return ", ".join(names) if names else "none"


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
            f.write(
                json.dumps({"key": key, "record": record}, default=float) + "\n"
            )
        return record


# -- arrays kept between runs (.npy, ignored by git) ---------------------------------------
def cache_path(args, name):
    """The `.npy` file of array `name` in the output directory's `cache/` folder."""
    folder = os.path.join(args.output_dir, "cache")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(
        folder,
        name.replace("/", "_").replace("|", "_").replace("=", "-") + ".npy",
    )


def save_array(args, name, array):
    """Keeps an array (weights, probabilities, samples), written atomically."""
    path = cache_path(args, name)
    np.save(path + ".tmp.npy", np.asarray(array))
    os.replace(path + ".tmp.npy", path)


def load_array(args, name):
    """The array kept under `name`, or None."""
    path = cache_path(args, name)
    return np.load(path) if os.path.exists(path) else None


# -- timing ------------------------------------------------------------------------------
def time_interleaved(
    functions, repeats, warmup=1, seed=0, progress=None, first_calls=None
):
    """Times each callable `repeats` times, round-robin in a fresh random order each round.

    Args:
        functions: dict name -> callable that runs the work once and blocks until it is done.
        repeats: timed calls per callable.
        warmup: untimed calls per callable first (compilation, allocation).
        progress: optional callable(message) for progress lines.
        first_calls: optional dict, filled with name -> seconds of the first warm-up call
            (where compilation happens).

    Returns:
        dict name -> list of seconds, one per timed call.
    """
    if repeats < 1:
        raise ValueError(
            f"Argument `repeats` must be >= 1. Received: repeats={repeats!r}"
        )
    names = list(functions)
    for name in names:
        for i in range(warmup):
            t0 = time.perf_counter()
            functions[name]()
            if i == 0 and first_calls is not None:
                first_calls[name] = time.perf_counter() - t0
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
        lines.append(
            "| "
            + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row)
            + " |"
        )
    return "\n".join(lines)


def write_table(args, name, title, headers, rows, notes=(), extra_markdown=""):
    """Writes `NAME.md` (with command, machine and date) and `NAME.csv` into the output dir."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC"
    )
    md = [f"### {title}", ""]
    md.append(
        f"Command: `{args.command}`"
        + ("  (quick mode: smoke test only)" if args.quick else "")
    )
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
    with open(
        os.path.join(args.output_dir, f"{name}.csv"), "w", newline=""
    ) as f:
        writer = csv.writer(f)
        writer.writerow(headers)
        for row in rows:
            writer.writerow(row)
    log(f"wrote {path}")
    return path
