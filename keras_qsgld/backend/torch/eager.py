"""The eager update: the variables of one dtype in chunks, on scratch buffers in the caches.

Small variables (and the last `size % ROW` elements of large ones) are packed into flat
buffers, padded to rows of `ROW` so that per-variable scalars act on rows; large ones are
sliced in place. A chunk's dozen operations run in place on scratch buffers, so the
variables and gradients cross memory about as often as in a fused kernel, and nothing is
allocated per chunk.
"""

import math

import torch

from keras_qsgld.backend.torch.draws import (
    draw_uniform_,
    first_round,
    lowbias32_,
    round_random_,
    seed_keys,
    to_int32,
)
from keras_qsgld.backend.torch.steps import torch_dtype
from keras_qsgld.optimizer import increment_dtype
from keras_qsgld.quantization import exact_integer_limit

# Elements per chunk of the eager update on a CPU (1 MiB of float32): a chunk's scratch
# buffers stay in the caches, and each operation is long enough that its fixed cost (a few
# microseconds) is small. Measured on 1 and 2 threads: 2**16 to 2**18 elements cost the same
# per element within 10 %, smaller chunks more. On a GPU a whole tensor is one chunk.
CHUNK = 1 << 18
GPU_CHUNK = 1 << 30
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
            k = to_int32(key_a)
            large = first_round(self.largest, k, self.grad.device)
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
        self._groups = None

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

    def groups(self, step_rule, variables):
        """`[(positions, values, slot values)]`, one group per variable dtype and device:
        the variables' torch tensors (and their slots'), by their place in this update
        (which picks their seed). Kept for the next update with the same variables: a
        Keras variable's tensor stays the same (`assign` copies into it), and reading
        `.value` costs microseconds per variable."""
        key = tuple(map(id, variables))
        cached = self._groups
        if cached is None or cached[0] != key:
            groups = {}
            for position, v in enumerate(variables):
                value = v.value
                slots = [s.value for s in step_rule.slots(self.optimizer, v)]
                member = groups.setdefault(
                    (value.dtype, value.device), ([], [], [])
                )
                member[0].append(position)
                member[1].append(value)
                member[2].append(slots)
            # The variables are held too: their ids cannot be reused while cached.
            cached = (key, list(groups.values()), list(variables))
            self._groups = cached
        return cached[1]

    def run(self, step_rule, grads, variables, scalars):
        optimizer = self.optimizer
        random = optimizer.rounding in ("stochastic", "dithered")
        key_a = key_b = None
        if random:
            state = optimizer._seed_generator.state.value
            key_a, key_b = seed_keys(state.tolist(), len(variables))
        stats = [0.0, 0.0, 0.0, 0.0]
        for positions, values, slot_values in self.groups(step_rule, variables):
            group_grads = [grads[p] for p in positions]
            dtype = increment_dtype(values[0])
            layout = self.layout(values, slot_values, torch_dtype(dtype))
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
        # `qp` as the random roundings' compiled kernel takes it (once per update).
        self.qp_tensor = torch.tensor([qp], dtype=dtype, device=device)
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
                    [to_int32(k) for k in self.key_b],
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
        fast = not self.exact
        if fast and not safe:
            low, high = torch.aminmax(x)
            # 2**-20 below the limit: y = qp x, rounded, stays below it.
            fast = max(-float(low), float(high)) * self.qp < self.limit * (
                1 - 2.0**-20
            )  # False for NaN
        if fast:
            q = self.round_fast(x, chunk, buffers, padding)
        else:
            noise = None
            if self.rounding in ("stochastic", "dithered"):
                noise = self.draw(k, a, b, buffers[5])
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

    def round_random_fused(self, out, x, chunk):
        """`out` = the stochastic or dithered rounding of `qp x`, drawn and rounded in one
        compiled kernel; False where that cannot be: a packed chunk whose noise is tracked
        (its padding draws 1/2, see `draw`), or no compiled kernel (see `draws`)."""
        k, a, b = chunk
        if k is None:
            if self.track:
                return False
            inner, key_b = (
                self.inner[1][a:b],
                self.key_b_rows[a // ROW : b // ROW],
            )
        else:
            inner, key_b = self.inner[0][a:b], self.key_b[k]
        return round_random_(
            out, x, self.qp_tensor, inner, key_b, self.rounding == "dithered"
        )

    def round_fast(self, x, chunk, buffers, padding):
        """`Q(qp x)` in grid units, where every `|qp x| < limit`, by in-place ops."""
        y = buffers[3]
        if self.rounding == "nearest":
            # floor(y + 1/2) = ceil(floor(2 y) / 2), exactly: 2 y and the halving are exact.
            q = torch.mul(x, 2.0 * self.qp, out=y).floor_().mul_(0.5).ceil_()
        elif self.rounding == "floor":
            q = torch.mul(x, self.qp, out=y).floor_()
        elif not self.round_random_fused(y, x, chunk):
            q = torch.mul(x, self.qp, out=y)
            noise = self.draw(*chunk, buffers[5])
            q.add_(noise).floor_()
            if self.rounding == "dithered":
                q.sub_(noise.sub_(0.5))
        else:
            q = y
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
