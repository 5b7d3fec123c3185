"""The optimizer base class for the Keras backend in use, picked at import as Keras picks its own.

`BackendQuantizedOptimizer` is `QuantizedOptimizer` with what one backend needs on top:
TensorFlow compiles the update with XLA outside XLA functions and densifies sparse gradients
(`keras_qsgld.backend.tensorflow`); PyTorch runs QSGLD's and QAdam's update in torch ops,
chunk by chunk eagerly and as one graph under `torch.compile` (`keras_qsgld.backend.torch`).
JAX needs nothing beyond `keras.ops`: its compiled paths (`jax.jit` in `fit` and of
`stateless_apply`) come from Keras' trainers.
"""

import keras

if keras.backend.backend() == "tensorflow":
    from keras_qsgld.backend.tensorflow import (
        TFQuantizedOptimizer as BackendQuantizedOptimizer,
    )
elif keras.backend.backend() == "torch":
    from keras_qsgld.backend.torch import (
        TorchQuantizedOptimizer as BackendQuantizedOptimizer,
    )
else:
    from keras_qsgld.optimizer import (
        QuantizedOptimizer as BackendQuantizedOptimizer,
    )

__all__ = ["BackendQuantizedOptimizer"]
