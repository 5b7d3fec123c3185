"""PyTorch's part of the quantized optimizers: QSGLD's and QAdam's update in torch ops.

Through `keras.ops`, one update makes about 160 operator calls per variable (most of them
turning Python constants into tensors), and eager PyTorch, Keras' default there, spent 36 to
50 times Keras' SGD on it. Here the same maths is written in torch ops, for all the
variables of an update at once, in two forms:

- Eager (`EagerUpdate`): the variables of one dtype are walked in chunks of about `CHUNK`
  elements, small variables packed side by side in flat buffers and large ones sliced in
  place. A chunk's dozen operations run in place on scratch buffers that stay in the CPU's
  cache, so the variables and gradients cross memory about as often as in a fused kernel,
  and nothing is allocated per chunk.
- Traced (`traced_update`, inside `torch.compile`: `model.compile(jit_compile=True)`): one
  graph over whole tensors, the range checks as `torch.where`, the seed state read once per
  update (no graph break with any rounding), Inductor fusing each variable's update.

Both compute what `QuantizedOptimizer.update_step` computes with `keras.ops` (the reference,
still used for other subclasses and tested against these): the same bits without
compensation, for every rounding, dtype and edge case (steps beyond the float format's
integer range applied unrounded, a learning rate of 0, non-finite gradients), and the random
roundings draw the same numbers as on every backend. With compensation, `h + s * h` is one
multiply-add (as XLA fuses it) and each tensor's norm is summed in another order: about one
increment in a million then moves by one grid cell.
"""

import math

import keras
import torch

from keras_qsgld.optimizer import QuantizedOptimizer, increment_dtype
from keras_qsgld.quantization import exact_integer_limit

# Elements per chunk of the eager update on a CPU (1 MiB of float32): a chunk's scratch
# buffers stay in the caches, and each operation is long enough that its fixed cost (a few
# microseconds) is small. Measured on 1 and 2 threads: 2**16 to 2**18 elements cost the same
# per element within 10 %, smaller chunks more. On a GPU a whole tensor is one chunk.
CHUNK = 1 << 18
GPU_CHUNK = 1 << 30

_HASH_KEY = 0x9E3779B9  # keras_qsgld.random: the first key's constant
_M1 = 0x7FEB352D  # lowbias32's multipliers
_M2 = 0x846CA68B


class TorchQuantizedOptimizer(QuantizedOptimizer):
    """`QuantizedOptimizer` on PyTorch: QSGLD's and QAdam's update in torch ops.

    Eagerly the update runs chunk by chunk over all variables (`EagerUpdate`); inside
    `torch.compile` it is traced as one graph (`traced_update`). A subclass whose step is
    not QSGLD's or QAdam's (another `update_step` or `_apply_increment`) runs the `keras.ops`
    update of the base class.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        step_rule = step_rule_of(self)
        if step_rule is None:
            return super()._backend_update_step(
                grads, trainable_variables, learning_rate
            )
        scalars = self._update_scalars(learning_rate)
        with torch.no_grad():
            if torch.compiler.is_compiling():
                traced_update(
                    self, step_rule, grads, trainable_variables, scalars
                )
            else:
                self._eager_update().run(
                    step_rule, grads, trainable_variables, scalars
                )

    def _eager_update(self):
        update = self.__dict__.get("_torch_eager_update")
        if update is None:
            update = EagerUpdate(self)
            # Stored around the attribute tracker: scratch buffers are no optimizer state.
            self.__dict__["_torch_eager_update"] = update
        return update


def step_rule_of(optimizer):
    """`SGDStep` for QSGLD, `AdamStep` for QAdam, None for a subclass with a step of its own."""
    from keras_qsgld.qadam import QAdam
    from keras_qsgld.qsgld import QSGLD

    cls = type(optimizer)
    if cls._apply_increment is not QuantizedOptimizer._apply_increment:
        return None
    for base, rule in ((QSGLD, SGDStep), (QAdam, AdamStep)):
        if isinstance(optimizer, base) and cls.update_step is base.update_step:
            return rule
    return None


# -- the steps ----------------------------------------------------------------------------
# Each writes the step `h` of a chunk (or a whole tensor) into its first buffer with the
# others as scratch, from the gradient `g` and the optimizer's slots for the same elements,
# all in the compute dtype; with `update=True` it also writes the slots' new values into
# `slots`. Traced, the buffers are None (new tensors: a functional graph) and the scalars
# 0-d tensors; eagerly, scratch buffers and Python floats. Each matches `update_step` bit
# for bit: the same roundings in the same order.


class SGDStep:
    """QSGLD's step: `h = -lr g` (the paper), or `keras.optimizers.SGD`'s momentum."""

    buffers = 2
    slot_padding = (
        0.0,
    )  # the slots' value in the packed padding (where g = 0)

    def __init__(self, optimizer, learning_rate, dtype):
        del dtype  # the scalars are used as given
        self.learning_rate = learning_rate
        self.negative_learning_rate = (
            -learning_rate
        )  # -(g lr) = g (-lr), exactly
        self.step_size = learning_rate
        self.momentum = optimizer.momentum
        self.nesterov = optimizer.nesterov

    @staticmethod
    def slots(optimizer, variable):
        if optimizer.momentum == 0:
            return []
        return [optimizer.momentums[optimizer._get_variable_index(variable)]]

    def __call__(self, g, slots, buffers, update):
        out, tmp = buffers[:2]
        if self.momentum == 0:
            return torch.mul(g, self.negative_learning_rate, out=out)
        (m,) = slots
        lr_g = torch.mul(g, self.learning_rate, out=tmp)
        if update:
            velocity = m.mul_(self.momentum).sub_(lr_g)
        else:
            velocity = torch.mul(m, self.momentum, out=out).sub_(lr_g)
        if self.nesterov:
            return torch.mul(velocity, self.momentum, out=out).sub_(lr_g)
        return velocity


class AdamStep:
    """QAdam's step: Adam's bias-corrected step `h = -a m / (sqrt(v) + epsilon)`."""

    buffers = 4
    slot_padding = (
        0.0,
        1.0,
    )  # v = 1: the padding's step is 0 (not 0 / 0) at epsilon 0

    def __init__(self, optimizer, learning_rate, dtype):
        a = optimizer._bias_corrected_learning_rate(
            keras.ops.convert_to_tensor(learning_rate, dtype), dtype
        )
        self.step_size = _scalar(a)
        self.beta_1, self.beta_2 = optimizer.beta_1, optimizer.beta_2
        # 1 - beta in the compute dtype, as `update_step` forms it.
        torch_dtype = _torch_dtype(dtype)
        self.one_minus_beta_1 = _scalar(
            1 - torch.tensor(self.beta_1, dtype=torch_dtype)
        )
        self.one_minus_beta_2 = _scalar(
            1 - torch.tensor(self.beta_2, dtype=torch_dtype)
        )
        self.epsilon = optimizer.epsilon

    @staticmethod
    def slots(optimizer, variable):
        index = optimizer._get_variable_index(variable)
        return [optimizer._momentums[index], optimizer._velocities[index]]

    def __call__(self, g, slots, buffers, update):
        out, tmp = buffers[:2]
        m, v = slots if update else buffers[2:4]
        if not update:
            m = torch.mul(slots[0], self.beta_1, out=m)
            v = torch.mul(slots[1], self.beta_2, out=v)
        else:
            m.mul_(self.beta_1)
            v.mul_(self.beta_2)
        m.add_(torch.mul(g, self.one_minus_beta_1, out=tmp))
        v.add_(torch.mul(g, g, out=tmp).mul_(self.one_minus_beta_2))
        h = torch.mul(m, -self.step_size, out=out)
        return h.div_(torch.sqrt(v, out=tmp).add_(self.epsilon))


def _scalar(x):
    """A 0-d tensor as a Python number eagerly; the tensor itself while traced."""
    if torch.compiler.is_compiling():
        return x
    return x.item()


# -- the random roundings' draws ------------------------------------------------------------
def _to_int32(value):
    """A Python integer's low 32 bits as a signed int32 value."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def lowbias32_int(x):
    """`keras_qsgld.random.lowbias32` on a Python integer (uint32 bits)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * _M1) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * _M2) & 0xFFFFFFFF
    return x ^ (x >> 16)


def lowbias32_(x, tmp):
    """`lowbias32` in place on an int32 tensor (its uint32 bits), with `tmp` as scratch."""
    for shift, multiplier in ((16, _M1), (15, _M2), (16, None)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        x.bitwise_xor_(tmp.bitwise_and_((1 << (32 - shift)) - 1))
        if multiplier is not None:
            x.mul_(_to_int32(multiplier))
    return x


def lowbias32(x):
    """`lowbias32` of an int32 tensor, functional (for traced graphs)."""
    for shift, multiplier in ((16, _M1), (15, _M2), (16, None)):
        x = x ^ ((x >> shift) & ((1 << (32 - shift)) - 1))
        if multiplier is not None:
            x = x * _to_int32(multiplier)
    return x


def seed_keys(state, count):
    """`(key_a, [key_b of variable i])` for the update's `count` variables: the keys
    `keras_qsgld.random.uniform_from_seed` derives from the seed `(s0, s1 + i)` that the
    `i`-th variable's `SeedGenerator.next()` would return. Python integers (uint32 bits)."""
    s0, s1 = (_to_int32(int(s)) for s in state)
    key_a = lowbias32_int(s0 ^ _HASH_KEY)
    return key_a, [
        lowbias32_int(_to_int32(s1 + i) + key_a) for i in range(count)
    ]


def draw_uniform_(inner, key_b, bits, tmp, out):
    """`out` = the uniform draws in [0, 1) at the positions whose first hash round is
    `inner` (`lowbias32(position ^ key_a)`), for the second key `key_b`: a Python integer,
    or an int32 tensor of one key per row of `ROW` elements (shape `(rows, 1)`).
    `bits`, `tmp`: int32 scratch."""
    if isinstance(key_b, int):
        torch.add(inner, _to_int32(key_b), out=bits)
    else:
        torch.add(inner.view(-1, ROW), key_b, out=bits.view(-1, ROW))
    lowbias32_(bits, tmp)
    torch.bitwise_right_shift(bits, 8, out=tmp).bitwise_and_(0xFFFFFF)
    return out.copy_(tmp).mul_(2.0**-24)


# -- eager ----------------------------------------------------------------------------------
ROW = 32  # the packed buffers hold each piece padded to whole rows of ROW elements


class _Layout:
    """How the eager update walks the variables of one group (one variable dtype).

    The variables smaller than `chunk`, and the last `size % ROW` elements of the larger
    ones, are packed into flat buffers of the compute dtype (`grad`, `delta`, `step` and
    one per slot), each piece padded with zeros to whole rows of `ROW`, so that per-variable
    scalars act on rows. The larger variables' first `size // ROW * ROW` elements are
    sliced in place. `chunks` lists `(k, start, stop)`: a range of the packed buffers (`k`
    None) or of variable `k`.
    """

    def __init__(self, values, slot_values, chunk, compute_dtype):
        device = values[0].device
        self.compute_dtype = compute_dtype
        self.values = values
        sizes = [v.numel() for v in values]
        self.large = [
            (k, n // ROW * ROW) for k, n in enumerate(sizes) if n >= chunk
        ]
        large = dict(self.large)
        # Packed pieces: (variable, first element, length, offset in the buffers).
        pieces, total = [], 0
        for k, n in enumerate(sizes):
            start = large.get(k, 0)
            if start < n:
                pieces.append((k, start, n - start, total))
                total += -(-(n - start) // ROW) * ROW
        self.pieces = pieces
        self.packed_size = total
        slot_count = len(slot_values[0])
        self.grad, self.delta, self.step, *self.slots = (
            torch.zeros(total, dtype=compute_dtype, device=device)
            for _ in range(3 + slot_count)
        )

        def views(flat):
            return [
                flat[o : o + n].view(values[k].shape)
                if n == sizes[k]
                else flat[o : o + n]
                for k, _, n, o in pieces
            ]

        self.grad_views, self.delta_views = views(self.grad), views(self.delta)
        self.slot_views = [views(s) for s in self.slots]
        self.packed_values = [
            self.piece(values[k], a, n) for k, a, n, _ in pieces
        ]
        self.packed_slots = [
            [self.piece(slot_values[k][j], a, n) for k, a, n, _ in pieces]
            for j in range(slot_count)
        ]
        # Per piece: its variable and rows; per packed row: its variable; per packed
        # element: its position in the variable, or padding.
        rows = [-(-n // ROW) for _, _, n, _ in pieces]
        self.piece_owner = torch.tensor(
            [k for k, _, _, _ in pieces], dtype=torch.int64, device=device
        )
        self.piece_rows = torch.tensor(rows, dtype=torch.int64)
        self.row_owner = torch.repeat_interleave(
            self.piece_owner.cpu(), self.piece_rows
        ).to(device)
        position = torch.zeros(total, dtype=torch.int32)
        padding = torch.ones(total, dtype=torch.bool)
        for k, start, n, o in pieces:
            position[o : o + n] = torch.arange(
                start, start + n, dtype=torch.int32
            )
            padding[o : o + n] = False
        self.position = position.to(device)
        self.padding = padding.to(device)
        self.padding_index = torch.nonzero(padding).flatten().to(device)
        self.chunks = [
            (None, a, min(total, a + chunk)) for a in range(0, total, chunk)
        ]
        self.chunks += [
            (k, a, min(m, a + chunk))
            for k, m in self.large
            for a in range(0, m, chunk)
        ]
        self.padding_counts = [
            int(self.padding[a:b].sum()) for k, a, b in self.chunks if k is None
        ]
        self.chunk = max([b - a for _, a, b in self.chunks] or [ROW])
        self.largest = max([m for _, m in self.large] or [0])
        self._inner = None

    @staticmethod
    def piece(tensor, start, length):
        """A variable's elements `start:start + length` of `tensor` (its gradient, value
        or a slot): the tensor itself when that is all of it."""
        if start == 0 and length == tensor.numel():
            return tensor
        return tensor.reshape(-1)[start : start + length]

    def inner_hash(self, key_a):
        """`(large, packed)`: the draws' first hash round `lowbias32(position ^ key_a)` at
        every position of the largest variable's in-place part, and at each packed
        element. It stays while the seed's first word does (`SeedGenerator.next` advances
        the second)."""
        if self._inner is None or self._inner[0] != key_a:
            k = _to_int32(key_a)
            positions = torch.arange(
                self.largest, dtype=torch.int32, device=self.grad.device
            )
            large = lowbias32_(
                positions.bitwise_xor_(k), torch.empty_like(positions)
            )
            packed = self.position.bitwise_xor(k)
            packed = lowbias32_(packed, torch.empty_like(packed))
            self._inner = (key_a, large, packed)
        return self._inner[1:]


class EagerUpdate:
    """The eager update of one optimizer, with its layouts and scratch buffers."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self._layouts = {}
        self._scratch = {}

    def scratch(self, n, dtype, device, count):
        """`count` buffers of `n` elements, kept for the next update."""
        key = (dtype, device)
        buffers = self._scratch.get(key)
        if buffers is None or len(buffers) < count or buffers[0].numel() < n:
            buffers = [
                torch.empty(n, dtype=dtype, device=device) for _ in range(count)
            ]
            self._scratch[key] = buffers
        return [b[:n] for b in buffers[:count]]

    def layout(self, values, slot_values, compute_dtype):
        """The layout of a group, made again when its variables' storage changes."""
        key = tuple((v.data_ptr(), v.shape) for v in values) + tuple(
            s.data_ptr() for slots in slot_values for s in slots
        )
        group = (values[0].dtype, values[0].device)
        cached = self._layouts.get(group)
        if cached is None or cached[0] != key:
            chunk = CHUNK if values[0].device.type == "cpu" else GPU_CHUNK
            chunk = max(ROW, chunk // ROW * ROW)
            cached = (key, _Layout(values, slot_values, chunk, compute_dtype))
            self._layouts[group] = cached
        return cached[1]

    def run(self, step_rule, grads, variables, scalars):
        optimizer = self.optimizer
        random = optimizer.rounding in ("stochastic", "dithered")
        key_a = key_b = None
        if random:
            state = optimizer._seed_generator.state.value
            key_a, key_b = seed_keys(state.tolist(), len(variables))
        # One group per variable dtype; a variable's place in this update picks its seed.
        groups = {}
        for position, (g, v) in enumerate(zip(grads, variables)):
            value = v.value
            slots = [s.value for s in step_rule.slots(optimizer, v)]
            groups.setdefault((value.dtype, value.device), []).append(
                (position, g, value, slots)
            )
        stats = [0.0, 0.0, 0.0, 0.0]
        for members in groups.values():
            positions, group_grads, values, slot_values = zip(*members)
            dtype = increment_dtype(values[0])
            layout = self.layout(values, slot_values, _torch_dtype(dtype))
            _GroupUpdate(
                self,
                layout,
                step_rule(optimizer, float(scalars.learning_rate), dtype),
                group_grads,
                slot_values,
                scalars,
                (key_a, key_b and [key_b[p] for p in positions]),
                stats,
            ).run()
        if random:
            state.add_(
                torch.tensor(
                    [0, len(variables)], dtype=state.dtype, device=state.device
                )
            )
        if optimizer._noise is not None:
            for variable, value in zip(optimizer._noise.variables, stats):
                variable.value.add_(value * optimizer._noise.weight)


def _torch_dtype(name):
    return torch.float64 if name == "float64" else torch.float32


class _GroupUpdate:
    """One eager update of one group, chunk by chunk.

    With compensation, a first pass takes the norms: the packed chunks' steps are computed
    once there (and their slots updated), the large chunks' steps computed there and again
    in the second pass (their slots are updated in place, once). Scratch buffers: 0 `h`,
    1 a temporary, 2 `x` (or Adam's new `m`), 3 `y` (or Adam's new `v`), 4 squares and
    errors, 5 the draws, 6-9 inputs converted to the compute dtype.
    """

    def __init__(
        self, eager, layout, rule, grads, slot_values, scalars, keys, stats
    ):
        optimizer = eager.optimizer
        dtype = layout.compute_dtype
        device = layout.grad.device
        self.layout, self.rule = layout, rule
        self.grads, self.slot_values = grads, slot_values
        self.rounding = optimizer.rounding
        self.key_a, self.key_b = keys
        self.stats = stats
        self.track = optimizer._noise is not None
        self.buffers = eager.scratch(layout.chunk, dtype, device, 10)
        self.int_buffers = eager.scratch(layout.chunk, torch.int32, device, 2)
        self.variable_dtype = layout.values[0].dtype
        self.lowp = None
        if self.variable_dtype != dtype:
            self.lowp = eager.scratch(
                layout.chunk, self.variable_dtype, device, 1
            )[0]
        self.step_size = float(rule.step_size)
        # The grid: `qp` and `1 / qp` in the compute dtype, as `increment_and_error` has them.
        self.qp = qp = float(scalars.resolution)
        self.cell = float(1.0 / torch.tensor(qp, dtype=dtype))
        self.limit = exact_integer_limit(str(dtype).replace("torch.", ""))
        self.pow2 = 0 < qp < math.inf and math.frexp(qp)[0] == 0.5
        self.gate = None
        if optimizer.compensation is not None:
            self.gate = float(scalars.gate)
        # r = 0 where the gate is 0: no norms to take.
        self.compensated = self.gate is not None and self.gate != 0
        # The fast path rounds in place where every |y| < limit; an `exact` update takes
        # `increment_and_error`'s formulas everywhere (learning rate 0, Qp near overflow).
        self.exact = not (self.step_size > 0 and math.isfinite(2.0 * qp))

    def run(self):
        layout = self.layout
        if layout.pieces:
            sources = [
                layout.piece(self.grads[k], a, n)
                for k, a, n, _ in layout.pieces
            ]
            torch._foreach_copy_(layout.grad_views, sources)
            for views, slots in zip(layout.slot_views, layout.packed_slots):
                torch._foreach_copy_(views, slots)
            for buffer, value in zip(layout.slots, self.rule.slot_padding):
                if value:
                    buffer.index_fill_(0, layout.padding_index, value)
        self.scale = self.scale_rows = None
        safe = False
        if self.compensated:
            safe = self.take_norms()
        if self.rounding in ("stochastic", "dithered"):
            self.inner = layout.inner_hash(self.key_a)
            if layout.pieces:
                key_b = torch.tensor(
                    [_to_int32(k) for k in self.key_b],
                    dtype=torch.int32,
                    device=layout.grad.device,
                )
                self.key_b_rows = key_b[layout.row_owner][:, None]
        packed = 0
        for chunk in layout.chunks:
            padding = 0
            if chunk[0] is None:
                padding = layout.padding_counts[packed]
                packed += 1
            self.update_chunk(chunk, safe, padding)
        if layout.pieces:
            views = layout.delta_views
            if (
                self.lowp is not None
            ):  # rounded to the variables' dtype, then added
                views = [d.to(self.variable_dtype) for d in views]
            torch._foreach_add_(layout.packed_values, views)
            for views, slots in zip(layout.slot_views, layout.packed_slots):
                torch._foreach_copy_(slots, views)

    def chunk_inputs(self, chunk, buffers):
        """`(g, slots, converted)` of a chunk in the compute dtype: views of the packed
        buffers or of the variable's own tensors, copies where the dtype differs
        (`converted`: the (view, copy) pairs to write back)."""
        k, a, b = chunk
        layout = self.layout
        if k is None:
            return layout.grad[a:b], [s[a:b] for s in layout.slots], []
        dtype = layout.compute_dtype
        g = self.grads[k].reshape(-1)[a:b]
        if g.dtype != dtype:
            g = buffers[9].copy_(g)
        slots, converted = [], []
        for j, s in enumerate(self.slot_values[k]):
            view = s.view(-1)[a:b]
            if view.dtype != dtype:
                converted.append((view, buffers[8 - j].copy_(view)))
                view = converted[-1][1]
            slots.append(view)
        return g, slots, converted

    def take_norms(self):
        """The first pass: `self.scale`, `gate * step_size / norm` per variable (0 where
        the norm is 0) as `compensation_term` forms it; returns whether the norms prove
        every `|y| < limit` (`|y_i| <= qp (1 + scale) |h_i|` and `|h_i| <= norm`)."""
        layout = self.layout
        dtype = layout.compute_dtype
        device = layout.grad.device
        rows = torch.empty(
            layout.packed_size // ROW, dtype=dtype, device=device
        )
        partials, owners = [], []
        for chunk in layout.chunks:
            k, a, b = chunk
            buffers = [buf[: b - a] for buf in self.buffers]
            g, slots, _ = self.chunk_inputs(chunk, buffers)
            if k is None:  # the step computed once, the slots updated, here
                step = buffers[0] = layout.step[a:b]
                h = self.rule(g, slots, buffers, update=True)
                if h.data_ptr() != step.data_ptr():
                    h = step.copy_(h)
            else:
                h = self.rule(g, slots, buffers, update=False)
            if k is None:
                square = torch.mul(h, h, out=buffers[4])
                torch.sum(
                    square.view(-1, ROW), -1, out=rows[a // ROW : b // ROW]
                )
            else:
                partials.append(torch.linalg.vector_norm(h))
                owners.append(k)
        sums = torch.zeros(len(layout.values), dtype=dtype, device=device)
        if layout.pieces:
            pieces = torch.segment_reduce(
                rows, "sum", lengths=layout.piece_rows
            )
            sums.index_add_(0, layout.piece_owner, pieces)
        if partials:
            sums.index_add_(
                0,
                torch.tensor(owners, device=device),
                torch.stack(partials).square_(),
            )
        norms = torch.sqrt(sums)
        coefficient = torch.tensor(self.gate, dtype=dtype) * torch.tensor(
            self.step_size, dtype=dtype
        )
        positive = norms > 0
        self.scale = torch.where(
            positive, coefficient / torch.where(positive, norms, 1.0), 0.0
        )
        self.scale_list = self.scale.tolist()
        if layout.pieces:
            self.scale_rows = self.scale[layout.row_owner][:, None]
        bound = self.qp * (1.0 + self.scale.double()) * norms.double()
        return not self.exact and bool(
            torch.all(bound < self.limit * (1 - 1e-3))
        )

    def update_chunk(self, chunk, safe, padding):
        """The second pass over one chunk: `padding` packed elements are not counted."""
        k, a, b = chunk
        n = b - a
        buffers = [buf[:n] for buf in self.buffers]
        if k is None and self.compensated:
            h = self.layout.step[a:b]
        else:
            g, slots, converted = self.chunk_inputs(chunk, buffers)
            h = self.rule(g, slots, buffers, update=True)
            for view, copy in converted:
                view.copy_(copy)
        x = h
        if self.scale is not None:
            if k is None:
                rows = self.scale_rows[a // ROW : b // ROW]
                x = torch.addcmul(
                    h.view(-1, ROW),
                    h.view(-1, ROW),
                    rows,
                    out=buffers[2].view(-1, ROW),
                ).view(-1)
            elif self.scale_list[k] != 0:
                x = torch.add(h, h, alpha=self.scale_list[k], out=buffers[2])
        noise = None
        if self.rounding in ("stochastic", "dithered"):
            noise = self.draw(k, a, b, buffers[5])
        fast = not self.exact
        if fast and not safe:
            low, high = torch.aminmax(x)
            # 2**-20 below the limit: y = qp x, rounded, stays below it.
            fast = max(-float(low), float(high)) * self.qp < self.limit * (
                1 - 2.0**-20
            )  # False for NaN
        if fast:
            q = self.round_fast(x, noise, buffers, padding)
        else:
            delta = self.round_exact(
                x, noise, self.layout.padding[a:b] if k is None else None
            )
        if k is None:
            if fast:
                torch.mul(q, self.cell, out=self.layout.delta[a:b])
            else:
                self.layout.delta[a:b].copy_(delta)
            return
        target = self.layout.values[k].view(-1)[a:b]
        if fast and self.pow2 and self.lowp is None:
            # q * cell is exact (cell a power of two): one rounding, as w + delta has.
            target.add_(q, alpha=self.cell)
            return
        if fast:
            delta = q.mul_(self.cell)
        if self.lowp is not None:  # rounded to the variable's dtype, then added
            delta = self.lowp[:n].copy_(delta)
        target.add_(delta)

    def draw(self, k, a, b, out):
        """The uniform draws of a chunk (0.5 at the packed padding, whose rounding error is
        then 0 in every mode)."""
        inner_large, inner_packed = self.inner
        bits, tmp = (buf[: b - a] for buf in self.int_buffers)
        if k is not None:
            return draw_uniform_(
                inner_large[a:b], self.key_b[k], bits, tmp, out
            )
        key_b = self.key_b_rows[a // ROW : b // ROW]
        noise = draw_uniform_(inner_packed[a:b], key_b, bits, tmp, out)
        if self.track:
            noise.masked_fill_(self.layout.padding[a:b], 0.5)
        return noise

    def round_fast(self, x, noise, buffers, padding):
        """`Q(qp x)` in grid units, where every `|qp x| < limit`, by in-place ops."""
        y = buffers[3]
        if self.rounding == "nearest":
            # floor(y + 1/2) = ceil(floor(2 y) / 2), exactly: 2 y and the halving are exact.
            q = torch.mul(x, 2.0 * self.qp, out=y).floor_().mul_(0.5).ceil_()
        else:
            q = torch.mul(x, self.qp, out=y)
            if self.rounding != "floor":
                q.add_(noise)
            q.floor_()
            if self.rounding == "dithered":
                q.sub_(noise.sub_(0.5))
        if self.track:
            # The padding's q and error are 0: neither rounded nor zero increments.
            error = torch.mul(x, self.qp, out=buffers[4]).neg_().add_(q)
            zeros = q.numel() - int(torch.count_nonzero(q)) - padding
            self.add_stats(q.numel() - padding, zeros, error)
        return q

    def round_exact(self, x, noise, padding):
        """The increment by `increment_and_error`'s formulas: for a chunk where some
        `|y| >= limit` or is not finite, and for a learning rate of 0. `padding`: the
        packed padding's mask (not counted), or None."""
        y = x * self.qp
        if self.rounding == "nearest":
            f = torch.floor(y)
            q = torch.where(y - f >= 0.5, f + 1.0, f)
        elif self.rounding == "floor":
            q = torch.floor(y)
        elif self.rounding == "stochastic":
            q = torch.floor(y + noise)
        else:
            q = torch.floor(y + noise) - (noise - 0.5)
        in_range = torch.abs(y) < self.limit
        if not self.step_size > 0:
            in_range.zero_()
        delta = torch.where(in_range, q * self.cell, x)
        if self.track:
            if padding is not None:
                in_range &= ~padding
            zeros = int(torch.count_nonzero(in_range & (delta == 0)))
            error = torch.where(in_range, q - y, 0.0)
            self.add_stats(int(torch.count_nonzero(in_range)), zeros, error)
        return delta

    def add_stats(self, rounded, zeros, error):
        """Adds a chunk's rounded elements, zero increments and rounding errors."""
        self.stats[0] += rounded
        self.stats[1] += zeros
        self.stats[2] += float(torch.sum(error))
        self.stats[3] += float(torch.sum(error.square_()))


# -- traced ---------------------------------------------------------------------------------
def traced_update(optimizer, step_rule, grads, variables, scalars):
    """The update as `torch.compile` traces it: whole tensors, one graph, no data-dependent
    Python (the range checks are `torch.where`), the seed state read and advanced once, and
    the per-variable scalars (norms, scales, keys) computed as vectors, which keeps the
    graph, and Inductor's compile time, small."""
    rounding = optimizer.rounding
    random = rounding in ("stochastic", "dithered")
    if random:
        state = optimizer._seed_generator.state.value
        seed = state.to(torch.int32)
        key_a = lowbias32(seed[0] ^ _to_int32(_HASH_KEY))
        count = torch.arange(
            len(variables), dtype=torch.int32, device=seed.device
        )
        keys_b = lowbias32(seed[1] + count + key_a)
        # The first hash round depends on the position alone: once, for the largest
        # variable, and sliced for the others.
        largest = max(v.value.numel() for v in variables)
        index = torch.arange(largest, dtype=torch.int32, device=seed.device)
        inner = lowbias32(index ^ key_a)
    tracked = optimizer._noise is not None
    stats = []
    groups = {}
    for position, (gradient, variable) in enumerate(zip(grads, variables)):
        value = variable.value
        dtype = increment_dtype(value)
        groups.setdefault(dtype, []).append(
            (position, gradient, value, variable)
        )
    for dtype, members in groups.items():
        torch_dtype = _torch_dtype(dtype)
        rule = step_rule(
            optimizer, scalars.learning_rate.to(torch_dtype), dtype
        )
        step_size = torch.as_tensor(rule.step_size, dtype=torch_dtype)
        steps = []
        for position, gradient, value, variable in members:
            g = gradient.to(torch_dtype)
            slots = [s.value for s in step_rule.slots(optimizer, variable)]
            work = [s.to(torch_dtype) for s in slots]
            h = rule(g, work, [None] * step_rule.buffers, update=True)
            for slot, new in zip(slots, work):
                if new is not slot:
                    slot.copy_(new)
            steps.append(h)
        qp = scalars.resolution.to(torch_dtype)
        # |y| < limit rounds (and nothing does at a learning rate of 0); nearest rounding
        # works on z = 2 y, exactly 2 y (or infinite where |y| is beyond the limit anyway).
        scale_y = 2.0 if rounding == "nearest" else 1.0
        limit = torch.where(
            step_size > 0, scale_y * exact_integer_limit(dtype), 0.0
        )
        # The scalars every variable's kernel reads, in one tensor: Inductor weighs fusing
        # every pair of kernels that read a common buffer, and one shared buffer instead of
        # four cut its compile time (measured: CIFAR ResNet-50's 149 variables).
        shared = [qp * scale_y, 1.0 / qp, limit]
        if optimizer.compensation is not None:
            norms = torch.stack([torch.linalg.vector_norm(h) for h in steps])
            positive = norms > 0
            gate = scalars.gate.to(torch_dtype) * step_size
            shared.append(
                torch.where(
                    positive, gate / torch.where(positive, norms, 1.0), 0.0
                )
            )
        shared = torch.cat([torch.reshape(v, (-1,)) for v in shared])
        qp_y, cell, limit = shared[0], shared[1], shared[2]
        for i, ((position, _, value, _), h) in enumerate(zip(members, steps)):
            x = h
            if optimizer.compensation is not None:
                x = torch.addcmul(h, h, shared[3 + i])
            y = x * qp_y
            if rounding == "nearest":
                # floor(y + 1/2) = ceil(floor(2 y) / 2), exactly.
                q = torch.ceil(torch.floor(y) * 0.5)
            elif rounding == "floor":
                q = torch.floor(y)
            else:
                bits = lowbias32(inner[: h.numel()] + keys_b[position])
                noise = ((bits >> 8) & 0xFFFFFF).to(torch_dtype).view(h.shape)
                noise = noise * 2.0**-24
                q = torch.floor(y + noise)
                if rounding == "dithered":
                    q = q - (noise - 0.5)
            in_range = torch.abs(y) < limit
            delta = torch.where(in_range, q * cell, x)
            value.add_(delta.to(value.dtype))
            if tracked:
                error = torch.where(in_range, q - y / scale_y, 0.0)
                stats.append(
                    torch.stack(
                        [
                            torch.sum(in_range),
                            torch.sum(in_range & (delta == 0)),
                            torch.sum(error),
                            torch.sum(error * error),
                        ]
                    ).to(torch.float32)
                )
    if random:
        state.add_(
            torch.tensor(
                [0, len(variables)], dtype=state.dtype, device=state.device
            )
        )
    if tracked:
        totals = torch.stack(stats).sum(0) * optimizer._noise.weight
        for variable, value in zip(optimizer._noise.variables, totals.unbind()):
            variable.value.add_(value)
