"""The random roundings' draws in torch ops: `keras_qsgld.random`'s counter hash, the same bits.

The first hash round, `lowbias32(position ^ key_a)`, depends on the position and the seed's
first word alone, which `SeedGenerator.next` never advances: the eager update keeps it from
one update to the next, and both forms compute it once for all variables (traced, as
operators of their own: see `hash_keys`).

Eagerly, the rest of the hash is about sixteen tensor operations, each a pass over the
chunk: the draws then cost more than the whole nearest-rounding update. `draw_uniform_`
and `round_random_` (the draws and the rounding) run as one kernel each, which Inductor
compiles on first use (integer maths, a conversion exact in float32, and the rounding's
operations in the same order: the same bits; see `_compile`). That first use costs
seconds (measured: 9 s with an empty Inductor cache, 2 s with a warm one, 2 cores);
they fall back to the tensor operations, with one warning, where they cannot be compiled
(no C++ compiler, for one), and `KERAS_QSGLD_FUSED_DRAWS=0` keeps to them.
"""

import os
import threading
import warnings

import torch

from keras_qsgld.random import FIRST_KEY, LOWBIAS32_ROUNDS


def to_int32(value):
    """A Python integer's low 32 bits as a signed int32 value."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def lowbias32_int(x):
    """`keras_qsgld.random.lowbias32` on a Python integer (uint32 bits)."""
    x &= 0xFFFFFFFF
    for shift, multiplier in LOWBIAS32_ROUNDS:
        x ^= x >> shift
        if multiplier is not None:
            x = (x * multiplier) & 0xFFFFFFFF
    return x


def lowbias32_(x, tmp):
    """`lowbias32` in place on an int32 tensor (its uint32 bits), with `tmp` as scratch."""
    for shift, multiplier in LOWBIAS32_ROUNDS:
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp.bitwise_and_((1 << (32 - shift)) - 1))
        if multiplier is not None:
            x.mul_(to_int32(multiplier))
    return x


def lowbias32(x):
    """`lowbias32` of an int32 tensor, functional (for traced graphs)."""
    for shift, multiplier in LOWBIAS32_ROUNDS:
        x = x ^ ((x >> shift) & ((1 << (32 - shift)) - 1))
        if multiplier is not None:
            x = x * to_int32(multiplier)
    return x


# Traced (`traced.traced_update`), Inductor inlines each elementwise result into the
# kernels that read it, and lowers it again for each read: each of the hash's three
# `x ^ (x >> s)` reads `x` twice, so a hash of a hash is lowered 64 times over, and the
# compile time grows fourfold with each hash chained (measured: ResNet50's dithered update,
# three hashes deep, compiled for 460 s). Two operators of our own keep every kernel one
# hash deep, as buffers that the kernels read: the keys' hash, and the first round at every
# position, which depends on the seed's first word alone (`SeedGenerator.next` never
# advances it) and is kept from one update to the next, as the eager update keeps it.


def _hash_keys(keys: torch.Tensor) -> torch.Tensor:
    return lowbias32_(keys.clone(), torch.empty_like(keys))


def first_round(size, key_a, device):
    """The draws' first hash round `lowbias32(position ^ key_a)` at positions 0 to
    `size - 1`; `key_a` an int32 value."""
    positions = torch.arange(size, dtype=torch.int32, device=device)
    return lowbias32_(
        positions.bitwise_xor_(key_a), torch.empty_like(positions)
    )


def _position_hash(key_a: torch.Tensor, size: int) -> torch.Tensor:
    key = (key_a.device, int(key_a.reshape(-1)[0]))
    inner = _position_hashes.pop(key, None)
    if inner is None or inner.numel() < size:
        inner = first_round(size, key[1], key_a.device)
    _position_hashes[key] = inner  # the most recent last
    while len(_position_hashes) > POSITION_HASHES:
        del _position_hashes[next(iter(_position_hashes))]
    # A copy: the compiled graph owns its operators' results and may reuse their memory.
    return inner[:size].clone()


def _position_hash_shape(key_a, size):
    return torch.empty(size, dtype=torch.int32, device=key_a.device)


# (device, key_a): lowbias32(position ^ key_a) at positions 0, 1, ..., for the first keys
# used last, a few, as optimizers with other seeds (a GAN's two, chains in one process)
# take turns; each holds 4 bytes per element of its largest variable.
POSITION_HASHES = 4
_position_hashes = {}

if hasattr(torch.library, "custom_op"):  # PyTorch 2.4 and later
    hash_keys = torch.library.custom_op(
        "keras_qsgld::hash_keys", _hash_keys, mutates_args=()
    )
    hash_keys.register_fake(torch.empty_like)
    position_hash = torch.library.custom_op(
        "keras_qsgld::position_hash", _position_hash, mutates_args=()
    )
    position_hash.register_fake(_position_hash_shape)
else:  # the same values, inlined

    def hash_keys(keys):
        return lowbias32(keys)

    def position_hash(key_a, size):
        positions = torch.arange(size, dtype=torch.int32, device=key_a.device)
        return lowbias32(positions ^ key_a)


def seed_keys(state, count):
    """`(key_a, [key_b of variable i])` for the update's `count` variables: the keys
    `keras_qsgld.random.uniform_from_seed` derives from the seed `(s0, s1 + i)` that the
    `i`-th variable's `SeedGenerator.next()` would return. Python integers (uint32 bits)."""
    s0, s1 = (to_int32(int(s)) for s in state)
    key_a = lowbias32_int(s0 ^ FIRST_KEY)
    return key_a, [
        lowbias32_int(to_int32(s1 + i) + key_a) for i in range(count)
    ]


def _uniform(inner, keys, dtype):
    """The uniform draws of `inner` for `keys` (one key, or one per row), as `dtype`."""
    bits = lowbias32(inner + keys)
    # 24 bits, exact in float32: the conversion and the power-of-two scale round nothing.
    return ((bits >> 8) & 0xFFFFFF).to(dtype) * 2.0**-24


# The kernels: the draws alone, and the random roundings `out` = `floor(x qp + u)` (less
# `u - 1/2`, dithered), in which each operation rounds as the tensor operations' do
# (Inductor contracts no `a * b + c`, and `u`'s product is exact anyway). Each in a function
# of its own for one key (a 0-d tensor) and for a key per row: each compiles for itself,
# within Dynamo's limit of recompilations per function, and the one-key kernels index no
# rows.
def _draws(out, inner, keys):
    out.copy_(_uniform(inner, keys, out.dtype))


def _draws_rows(out, inner, keys):
    out.copy_(_uniform(inner, keys, out.dtype))


def _stochastic(out, x, inner, keys, qp):
    out.copy_(torch.floor(x * qp + _uniform(inner, keys, out.dtype)))


def _stochastic_rows(out, x, inner, keys, qp):
    out.copy_(torch.floor(x * qp + _uniform(inner, keys, out.dtype)))


def _dithered(out, x, inner, keys, qp):
    u = _uniform(inner, keys, out.dtype)
    out.copy_(torch.floor(x * qp + u) - (u - 0.5))


def _dithered_rows(out, x, inner, keys, qp):
    u = _uniform(inner, keys, out.dtype)
    out.copy_(torch.floor(x * qp + u) - (u - 0.5))


# The kernels that round `x` (the others only draw): they take `x` and `qp` too.
_ROUNDING = (_stochastic, _stochastic_rows, _dithered, _dithered_rows)


def _fused_draws_setting():
    value = os.environ.get("KERAS_QSGLD_FUSED_DRAWS", "1")
    if value not in ("0", "1"):
        raise ValueError(
            "Environment variable `KERAS_QSGLD_FUSED_DRAWS` must be 1 (the eager update "
            "compiles its random roundings' draws) or 0 (tensor operations). Received: "
            f"KERAS_QSGLD_FUSED_DRAWS={value!r}"
        )
    return value == "1"


# Whether the draws run as one compiled kernel (`KERAS_QSGLD_FUSED_DRAWS=0` turns it off,
# as tests do to check the tensor operations); `_fused`: the kernels compiled so far, and
# whether compiling has failed.
FUSED_DRAWS = _fused_draws_setting()
_fused = {"failed": False, "kernels": {}}
_compiling = threading.Lock()


def _run_fused(kernels, tensors, key_b, *rest):
    """Runs `kernel(*tensors, keys, *rest)` compiled (once per process), `kernels` the
    one-key and the key-per-row kernel: for a Python integer `key_b` the first, on flat
    tensors, else the second, on the tensors viewed as one row per key. False where it
    cannot be compiled."""
    if not FUSED_DRAWS or _fused["failed"]:
        return False
    if isinstance(key_b, int):
        kernel = kernels[0]
        keys = torch.tensor(
            to_int32(key_b), dtype=torch.int32, device=tensors[0].device
        )
    else:
        kernel, keys = kernels[1], key_b
        tensors = [t.view(keys.shape[0], -1) for t in tensors]
    key = (kernel, tensors[0].device, tensors[0].dtype)
    try:
        compiled = _fused["kernels"].get(key)
        if compiled is None:
            # One thread at a time compiles, and calls a kernel first (where
            # `torch.compile` compiles): tracing in two threads at once fails.
            with _compiling:
                compiled = _fused["kernels"].get(key)
                if compiled is None:
                    compiled = _compile(kernel, *key[1:], keys.dim())
                    compiled(*tensors, keys, *rest)
                    _fused["kernels"][key] = compiled
                    return True
        compiled(*tensors, keys, *rest)
    except Exception as error:  # noqa: BLE001 - any failure to compile means: fall back
        with _compiling:
            warned, _fused["failed"] = _fused["failed"], True
        if warned:  # by another thread
            return False
        warnings.warn(
            "keras_qsgld: the eager PyTorch update could not compile its random roundings' "
            f"draws into one kernel ({type(error).__name__}: {_first_line(error)}); it computes "
            "them with tensor operations instead (the same values, about twice the update's "
            "time).",
            RuntimeWarning,
            stacklevel=4,
        )
        return False
    return True


def _compile(kernel, device, dtype, key_dims):
    """`kernel` compiled for any size, on `device`, its float tensors of `dtype`.

    On a CPU, through `torch._inductor.standalone_compile` where there is one: a kernel
    called like a function. Through `torch.compile`, each call also passes Dynamo's guards
    and wrappers, some 35 us against 7 (measured on the Intel Xeon), which came to a tenth
    of ResNet50's dithered update, in about 100 calls. Inductor's code for dynamic sizes
    runs on one thread unless told to let OpenMP decide at run time (measured: 174 us per
    2**18 elements on 1 or 2 threads, 82 us with `dynamic_threads` on 2)."""
    options = {
        "cpp.dynamic_threads": True,
        # The same bits as the tensor operations whatever the user's environment sets for
        # Inductor: no `a * b + c` contracted, and no flush of subnormals to zero (which
        # the unsafe-math build sets for the whole process as the kernel loads).
        "cpp.enable_floating_point_contract_flag": "off",
        "cpp.enable_unsafe_math_opt_flag": False,
    }
    if device.type == "cpu" and hasattr(torch._inductor, "standalone_compile"):
        try:
            return _compile_standalone(kernel, device, dtype, key_dims, options)
        except Exception:  # noqa: BLE001 - Dynamo's way below compiles it, or says why
            pass
    return torch.compile(kernel, fullgraph=True, options=options)


def _compile_standalone(kernel, device, dtype, key_dims, options):
    """`kernel` traced by `make_fx` and compiled by `torch._inductor.standalone_compile`."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def returning_out(out, *args):
        kernel(out, *args)
        return [out]

    # Traced on examples of sizes of their own, symbolic: the compiled kernel has no
    # guards, and a size of 1 would be compiled in as a constant. Equal sizes are taken to
    # be one size: the rows' count (3, also the keys') differs from their length (8).
    shape = (3, 8) if key_dims else (24,)
    out = torch.zeros(shape, dtype=dtype, device=device)
    inner = torch.zeros(shape, dtype=torch.int32, device=device)
    keys = torch.zeros((3, 1)[:key_dims], dtype=torch.int32, device=device)
    if kernel in _ROUNDING:
        x = torch.zeros(shape, dtype=dtype, device=device)
        qp = torch.ones((1,), dtype=dtype, device=device)
        examples = [out, x, inner, keys, qp]
    else:
        examples = [out, inner, keys]
    graph = make_fx(returning_out, tracing_mode="symbolic")(*examples)
    # `standalone_compile` finds the fake tensors under "example_value", as Dynamo puts them.
    for node in graph.graph.nodes:
        if "val" in node.meta:
            node.meta.setdefault("example_value", node.meta["val"])
    return torch._inductor.standalone_compile(
        graph, examples, options={"config_patches": options}
    )


def _first_line(error, limit=200):
    """The first line of `error`'s message, cut at `limit` characters with an ellipsis."""
    line = (str(error).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def round_random_(out, x, qp, inner, key_b, dithered):
    """`out` = `floor(x qp + u)` (stochastic) or `floor(x qp + u) - (u - 1/2)` (dithered),
    `u` the draws of `draw_uniform_(inner, key_b, ...)`, as one compiled kernel; `qp` a tensor
    of one element, of `x`'s dtype. Returns False, `out` untouched, where that kernel cannot run
    (then draw and round by tensor operations)."""
    kernels = (
        (_dithered, _dithered_rows)
        if dithered
        else (_stochastic, _stochastic_rows)
    )
    return _run_fused(kernels, (out, x, inner), key_b, qp)


def draw_uniform_(inner, key_b, bits, tmp, out):
    """`out` = the uniform draws in [0, 1) at the positions whose first hash round is
    `inner` (`lowbias32(position ^ key_a)`), for the second key `key_b`: a Python integer,
    or an int32 tensor of one key per row (shape `(rows, 1)`) of `inner` cut into rows.
    `bits`, `tmp`: int32 scratch."""
    if _run_fused((_draws, _draws_rows), (out, inner), key_b):
        return out
    if isinstance(key_b, int):
        torch.add(inner, to_int32(key_b), out=bits)
    else:
        rows = key_b.shape[0]
        torch.add(inner.view(rows, -1), key_b, out=bits.view(rows, -1))
    lowbias32_(bits, tmp)
    torch.bitwise_right_shift(bits, 8, out=tmp).bitwise_and_(0xFFFFFF)
    return out.copy_(tmp).mul_(2.0**-24)
