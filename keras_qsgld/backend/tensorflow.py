"""TensorFlow's part of the quantized optimizers: the XLA-compiled update and sparse gradients."""

import functools

import keras
import tensorflow as tf

from keras_qsgld.backend.ops import tensorflow_graph_under_xla
from keras_qsgld.optimizer import QuantizedOptimizer


class TFQuantizedOptimizer(QuantizedOptimizer):
    """`QuantizedOptimizer` on TensorFlow.

    - Sparse gradients (`tf.IndexedSlices`, from embeddings) are made dense: the norm of the
      compensation term and the rounding see every row.
    - `jit_compile=True`: the update runs as one XLA-compiled function wherever it would not
      be compiled otherwise: in eager loops (as Keras 2's optimizers did) and inside a
      `tf.function` or `fit` without XLA (op by op, its ~20 element-wise passes per
      variable cost several times SGD's update; fused, about as much). Under XLA already,
      or under a `tf.distribute` strategy (where Keras turns XLA off), it runs as it is.
      The learning rate enters as a tensor, so any sequence of learning rates (a callable
      that returns Python floats too) compiles once.
    """

    _xla_update_step = (
        None  # (schedules_key, the compiled update), made on first use
    )

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        grads = [
            tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
            for g in grads
        ]
        if (
            self.jit_compile
            and not tf.distribute.has_strategy()
            and not tensorflow_graph_under_xla()
        ):
            # tf.Variables (not Keras wrappers) so the function receives them as variables.
            trainable_variables = [
                v.value if isinstance(v, keras.Variable) else v
                for v in trainable_variables
            ]
            # A cast, not a conversion: under floatx float64 or bfloat16 the learning rate
            # (a variable or a schedule's value) is of that dtype.
            learning_rate = tf.cast(learning_rate, tf.float32)
            return self._compiled_update_step()(
                grads, trainable_variables, learning_rate
            )
        return super()._backend_update_step(
            grads, trainable_variables, learning_rate
        )

    def _compiled_update_step(self):
        """The XLA-compiled update, made again when a schedule changed (a new clock from
        `QSGLDMonitor` in a second `fit`, a value set by hand): the schedules' values are
        constants of the traced function."""
        key = self.schedules_key()
        compiled = self._xla_update_step
        if compiled is None or self._xla_update_key != key:
            # A partial, not a bound method: TensorFlow's retracing detector keys functions by
            # their code object, which every instance's bound method shares, and warned when
            # several optimizers compiled one after another (a learning-rate sweep).
            update = functools.partial(
                QuantizedOptimizer._backend_update_step, self
            )
            compiled = tf.function(update, jit_compile=True, autograph=False)
            # Stored around the attribute tracker: a tf.function is no optimizer state.
            self.__dict__["_xla_update_step"] = compiled
            self.__dict__["_xla_update_key"] = key
        return compiled
