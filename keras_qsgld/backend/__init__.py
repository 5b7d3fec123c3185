"""What differs between the Keras backends, picked at import as Keras picks its own.

- `keras_qsgld.backend.optimizer.BackendQuantizedOptimizer`: `QuantizedOptimizer` with what
  one backend needs on top (`backend/tensorflow.py`: the XLA-compiled update outside XLA
  functions, sparse gradients). JAX and PyTorch need nothing beyond `keras.ops`: their
  compiled paths come from Keras' trainers.
- `keras_qsgld.backend.ops`: XLA's optimization barrier, for the fast norm.
"""
