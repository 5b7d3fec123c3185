"""What XLA's CPU backend compiles QSGLD's update into on this host: the machine code, counted.

`benchmarks.speed --tables breakdown` times where QSGLD's update spends its time under
XLA; this script shows why, from the code XLA generates. It compiles Keras' SGD update and
QSGLD's (the paper's schedules, nearest rounding) over one float32 variable of `--size`
elements with `jax.jit`, has XLA dump the object code of every kernel
(`XLA_FLAGS=--xla_dump_to`), disassembles each kernel with `objdump` (GNU binutils) and
counts, per kernel: its instructions, those on 256-bit (ymm) and 512-bit (zmm) vector
registers, the scalar-into-vector inserts (`vinsertps`: a reduction that is vectorized
across rows builds its vectors one element at a time), the vector floors (`vroundps`,
`vrndscaleps`) and the fused multiply-adds. The kernels that loop over the variable's
elements are the passes over memory: SGD has one; QSGLD one for its compensation's norm
(which must be complete before any element is rounded) and one for the rounded update.

Run from the repository root: `python -m benchmarks.xla_code` (x86-64 with `objdump`;
output is plain text, quoted in BENCHMARKS.md).
"""

import collections
import os
import re
import shutil
import subprocess
import tempfile

from benchmarks import common
from experiments import cli

# XLA reads its flags when JAX first compiles: the dump folder is set before Keras is
# imported, and removed at the end.
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS")
DUMP_DIR = tempfile.mkdtemp(prefix="xla_code_")
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [USER_XLA_FLAGS, f"--xla_dump_to={DUMP_DIR}"])
)
common.use_backend(__name__, "jax", "inspects the code `jax.jit` compiles")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402

from benchmarks.optimizers import paper_qsgld  # noqa: E402

# ResNet50's largest 3x3 kernel (3x3x512x512): a variable large enough that XLA splits its
# loops over threads, as it does for the models of the speed tables.
DEFAULT_SIZE = 3 * 3 * 512 * 512
LEARNING_RATE = 0.01
COLUMNS = (
    "instructions",
    "ymm (256-bit)",
    "zmm (512-bit)",
    "vinsertps",
    "vector floors",
    "FMAs",
)


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        type=cli.positive_int,
        default=DEFAULT_SIZE,
        help=f"elements of the one float32 variable (default: {DEFAULT_SIZE})",
    )
    return parser.parse_args(argv)


def compile_updates(size):
    """Compiles SGD's and QSGLD's `stateless_apply` over one variable, as the modules
    `jit_sgd_update` and `jit_qsgld_update`."""
    variable = keras.Variable(jnp.zeros((size,), jnp.float32))
    grads = [jnp.full((size,), 1e-3, jnp.float32)]
    for name, optimizer in (
        ("sgd_update", keras.optimizers.SGD(LEARNING_RATE)),
        (
            "qsgld_update",
            paper_qsgld(LEARNING_RATE, steps_per_epoch=100, epochs=10, seed=0),
        ),
    ):
        optimizer.build([variable])

        def update(opt_values, grads, values, optimizer=optimizer):
            return optimizer.stateless_apply(opt_values, grads, values)

        update.__name__ = name
        values = [v.value for v in optimizer.variables]
        jax.block_until_ready(jax.jit(update)(values, grads, [variable.value]))


def count_instructions(obj):
    """The counts of `COLUMNS` in one object file's disassembly."""
    out = subprocess.run(
        ["objdump", "-d", "--no-show-raw-insn", obj],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    counts = collections.Counter()
    for line in out.splitlines():
        match = re.match(r"\s+[0-9a-f]+:\s+(\S+)\s*(.*)", line)
        if not match:
            continue
        mnemonic, operands = match.groups()
        counts["instructions"] += 1
        counts["ymm (256-bit)"] += "%ymm" in operands
        counts["zmm (512-bit)"] += "%zmm" in operands
        counts["vinsertps"] += mnemonic == "vinsertps"
        counts["vector floors"] += mnemonic in ("vroundps", "vrndscaleps")
        counts["FMAs"] += mnemonic.startswith("vfmadd")
    return counts


def kernel_rows():
    """`(update, kernel, counts)` for every kernel object XLA dumped."""
    rows = []
    for name in sorted(os.listdir(DUMP_DIR)):
        match = re.match(
            r"module_\d+\.jit_(sgd|qsgld)_update\.obj-file\.(.+)\.o$", name
        )
        if match:
            update, kernel = match.groups()
            kernel = kernel.removeprefix("__compute_module_").removesuffix(
                "_kernel_module"
            )
            rows.append(
                (
                    update,
                    kernel,
                    count_instructions(os.path.join(DUMP_DIR, name)),
                )
            )
    return rows


def main(argv=None):
    args = parse_args(argv)
    if shutil.which("objdump") is None:
        raise cli.UserError(
            "benchmarks.xla_code needs `objdump` (GNU binutils, e.g. `apt-get install binutils`)"
        )
    try:
        compile_updates(args.size)
        rows = kernel_rows()
    finally:
        shutil.rmtree(DUMP_DIR, ignore_errors=True)
        # The machine line names the user's flags, not the dump folder (already read).
        if USER_XLA_FLAGS is None:
            del os.environ["XLA_FLAGS"]
        else:
            os.environ["XLA_FLAGS"] = USER_XLA_FLAGS
    if not rows:
        raise cli.UserError(
            "XLA dumped no kernel object code for the updates (this script needs XLA's CPU "
            "backend, as JAX installs it on x86-64)"
        )
    print(f"Machine: {common.machine_description(['jax'])}\n")
    print(
        f"One float32 variable of {args.size} elements, `jax.jit` of `stateless_apply`, "
        f"lr {LEARNING_RATE}; QSGLD: the paper's schedules, nearest rounding. Per kernel "
        "that XLA compiled: instructions, and those of each kind.\n"
    )
    print(
        common.markdown_table(
            ("update", "kernel", *COLUMNS),
            [
                (update, kernel, *(counts[c] for c in COLUMNS))
                for update, kernel, counts in rows
            ],
        )
    )


if __name__ == "__main__":
    common.run_benchmark(main, resumable=False)
