"""PyTorch's part of the quantized optimizers: QSGLD's and QAdam's update in torch ops.

Through `keras.ops`, one update makes about 160 operator calls per variable (most of them
turning Python constants into tensors), and eager PyTorch, Keras' default there, spent 36 to
50 times Keras' SGD on it. Here the same maths is written in torch ops, for all the
variables of an update at once, in two forms:

- Eager (`eager.EagerUpdate`): the variables of one dtype are walked in chunks of about `CHUNK`
  elements, small variables packed side by side in flat buffers and large ones sliced in
  place. A chunk's dozen operations run in place on scratch buffers that stay in the CPU's
  cache, so the variables and gradients cross memory about as often as in a fused kernel,
  and nothing is allocated per chunk.
- Traced (`traced.traced_update`, inside `torch.compile`: `model.compile(jit_compile=True)`): one
  graph over whole tensors, the range checks as `torch.where`, the seed state read once per
  update (no graph break with any rounding), Inductor fusing each variable's update; the
  random roundings' keys and first hash round are operators of their own (`draws`), which
  keeps Inductor from lowering a chain of hashes many times over.

Both compute what `QuantizedOptimizer.update_step` computes with `keras.ops` (the reference,
still used for other subclasses and tested against these): the same bits without
compensation, for every rounding, dtype and edge case (steps beyond the float format's
integer range applied unrounded, a learning rate of 0, non-finite gradients), and the random
roundings draw the same numbers as on every backend. With compensation, `h + s * h` is one
multiply-add (as XLA fuses it) and each tensor's norm is summed in another order: about one
increment in a million then moves by one grid cell.

The modules: `steps` (QSGLD's and QAdam's step `h` in torch ops), `draws` (the random
roundings' draws), `eager` and `traced` (the two forms of the update).
"""

import torch

from keras_qsgld.backend.torch.eager import EagerUpdate
from keras_qsgld.backend.torch.steps import AdamStep, SGDStep
from keras_qsgld.backend.torch.traced import traced_update
from keras_qsgld.optimizer import QuantizedOptimizer


class TorchQuantizedOptimizer(QuantizedOptimizer):
    """`QuantizedOptimizer` on PyTorch: QSGLD's and QAdam's update in torch ops.

    Eagerly the update runs chunk by chunk over all variables (`EagerUpdate`); inside
    `torch.compile` it is traced as one graph (`traced_update`). A subclass whose step is
    not QSGLD's or QAdam's (another `update_step` or `_apply_increment`), and a stateless
    update (`stateless_apply`), run the `keras.ops` update of the base class.
    """

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        step_rule = step_rule_of(self)
        if step_rule is None or in_stateless_scope():
            # Under `stateless_apply` the new values go to the scope, not into the
            # variables: the `keras.ops` update, which assigns through Keras, handles it.
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
                # Its buffers, kept from one update to the next, must not be inference
                # tensors: an update under `torch.inference_mode` followed by one outside
                # it could not write them (Keras' own optimizers allow it).
                # (`inference_mode(False)` turns gradients on: `no_grad` comes after.)
                with torch.inference_mode(False), torch.no_grad():
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


def in_stateless_scope():
    """Whether Keras runs a stateless update (`optimizer.stateless_apply`) here."""
    try:
        from keras.src.backend.common.stateless_scope import (
            in_stateless_scope as keras_in_stateless_scope,
        )
    except (
        ImportError
    ):  # a private module: without it, assume the usual stateful update
        return False
    return keras_in_stateless_scope()


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
