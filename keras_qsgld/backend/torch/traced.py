"""The update as `torch.compile` traces it (Keras' `jit_compile=True` on PyTorch)."""

import torch

from keras_qsgld.backend.torch.draws import (
    hash_keys,
    lowbias32,
    position_hash,
    to_int32,
)
from keras_qsgld.backend.torch.steps import torch_dtype
from keras_qsgld.optimizer import increment_dtype
from keras_qsgld.quantization import exact_integer_limit
from keras_qsgld.random import FIRST_KEY


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
        # The keys, and the first hash round at each position (for the largest
        # variable, sliced for the others), as buffers: see `draws.hash_keys`.
        key_a = hash_keys(seed[:1] ^ to_int32(FIRST_KEY))
        count = torch.arange(
            len(variables), dtype=torch.int32, device=seed.device
        )
        keys_b = hash_keys(seed[1] + count + key_a)
        largest = max(v.value.numel() for v in variables)
        inner = position_hash(key_a, largest)
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
        compute = torch_dtype(dtype)
        rule = step_rule(optimizer, scalars.learning_rate.to(compute), dtype)
        step_size = torch.as_tensor(rule.step_size, dtype=compute)
        steps = []
        for position, gradient, value, variable in members:
            g = gradient.to(compute)
            slots = [s.value for s in step_rule.slots(optimizer, variable)]
            work = [s.to(compute) for s in slots]
            h = rule(g, work, [None] * step_rule.buffers, update=True)
            for slot, new in zip(slots, work):
                if new is not slot:
                    slot.copy_(new)
            steps.append(h)
        qp = scalars.resolution.to(compute)
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
            gate = scalars.gate.to(compute) * step_size
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
                noise = ((bits >> 8) & 0xFFFFFF).to(compute).view(h.shape)
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
