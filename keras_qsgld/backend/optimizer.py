"""The optimizer base class for the Keras backend in use, picked at import as Keras picks its own.

`BackendQuantizedOptimizer` is `QuantizedOptimizer` with what one backend needs on top:
TensorFlow compiles the update with XLA outside XLA functions and densifies sparse gradients
(`keras_qsgld.backend.tensorflow`). JAX and PyTorch need nothing beyond `keras.ops`: their
compiled paths (`jax.jit` in `fit` and of `stateless_apply`, `torch.compile`) come from
Keras' trainers.
"""

import keras

if keras.backend.backend() == "tensorflow":
    from keras_qsgld.backend.tensorflow import (
        TFQuantizedOptimizer as BackendQuantizedOptimizer,
    )
else:
    from keras_qsgld.optimizer import (
        QuantizedOptimizer as BackendQuantizedOptimizer,
    )

__all__ = ["BackendQuantizedOptimizer"]
