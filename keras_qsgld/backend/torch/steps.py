"""QSGLD's and QAdam's step `h` in torch ops, bitwise as their `update_step`."""

import keras
import torch

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
        compute = torch_dtype(dtype)
        self.one_minus_beta_1 = _scalar(
            1 - torch.tensor(self.beta_1, dtype=compute)
        )
        self.one_minus_beta_2 = _scalar(
            1 - torch.tensor(self.beta_2, dtype=compute)
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


def torch_dtype(name):
    """The torch dtype of a compute dtype name ("float32" or "float64")."""
    return torch.float64 if name == "float64" else torch.float32
