"""Models for the examples, the tuning scripts and the benchmarks (one home for all).

`build_model(name, input_shape, num_classes, seed=None, **kwargs)`:

- `"cnn"`: the paper's FashionMNIST CNN (the authors' `torch_SmallNet.py`): conv 32 3x3
  (same padding) + ReLU, max-pool 2, conv 64 3x3 + ReLU, max-pool 2, dense to the classes
  (3136 -> 10 at 28x28), Glorot-uniform (Xavier) on the dense layer.
- `"cifar_resnet"`: the CIFAR ResNet of He et al. (2016, s4.2) as in the authors'
  `torch_resnet.py`: 3x3 stem with 16 channels, three stages of `n` basic blocks with
  16/32/64 channels (stride 2 at the start of stages 2 and 3), identity shortcuts with
  zero-padded channels where the shape changes ("option A"), global average pooling,
  dense. Depth `6n + 2`; `depth=50` (n = 8, the default) is the authors' "ResNet-50".
  Convolutions are Kaiming-normal initialised without bias, batch norm as PyTorch's
  (momentum 0.9 in Keras' convention, epsilon 1e-5).
- `"resnet50"`: `keras.applications.ResNet50(weights=None)`, the ImageNet ResNet-50
  (bottleneck blocks, 25.6 M weights). It downsamples 32 times: at CIFAR's 32x32 its last
  feature map is 1x1 (a warning says so); inputs must be at least 32x32.
- `"mlp"`: flatten + dense ReLU layers (`hidden=(128,)`), for digits.
- `"cnn1d"`: three 1-D convolutions (32 channels, kernel 5, stride 2, ReLU) + dense, for
  MNIST-1D.

Every model ends in a dense layer with a softmax (`logits=False`, the default; compile with
`"sparse_categorical_crossentropy"`) or without one (`logits=True`; use
`SparseCategoricalCrossentropy(from_logits=True)`).
"""

import warnings

import keras

MODELS = ("cnn", "cifar_resnet", "resnet50", "mlp", "cnn1d")


def build_model(
    name, input_shape, num_classes, seed=None, logits=False, **kwargs
):
    """Builds a (not compiled) Keras model.

    Args:
        name: one of `MODELS`.
        input_shape: shape of one example, e.g. `(28, 28, 1)`; `(H, W)` images get a
            channel axis, `(L,)` sequences one for "cnn1d".
        num_classes: int >= 2, size of the output layer.
        seed: None or int. If an int, `keras.utils.set_random_seed(seed)` is called first
            (it seeds Python, NumPy and the backend), so the same seed gives the same
            initial weights.
        logits: bool. If False (default) the output layer has a softmax.
        **kwargs: per model: `depth` (cifar_resnet, 6n+2, default 50), `hidden`
            (mlp, tuple of widths, default `(128,)`), `filters` (cnn1d, default 32).

    Returns:
        A `keras.Model` named after `name`.
    """
    if name not in MODELS:
        raise ValueError(
            f"Argument `name` must be one of {MODELS}. Received: name={name!r}"
        )
    input_shape = tuple(int(d) for d in input_shape)
    if not input_shape or any(d < 1 for d in input_shape):
        raise ValueError(
            f"Argument `input_shape` must be a non-empty tuple of positive ints. "
            f"Received: input_shape={input_shape!r}"
        )
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or num_classes < 2
    ):
        raise ValueError(
            f"Argument `num_classes` must be an int >= 2. Received: num_classes={num_classes!r}"
        )
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    builders = {
        "cnn": _cnn,
        "cifar_resnet": _cifar_resnet,
        "resnet50": _resnet50,
        "mlp": _mlp,
        "cnn1d": _cnn1d,
    }
    allowed = {
        "cifar_resnet": {"depth"},
        "mlp": {"hidden"},
        "cnn1d": {"filters"},
    }.get(name, set())
    unknown = set(kwargs) - allowed
    if unknown:
        raise ValueError(
            f"Model {name!r} accepts the keyword arguments {sorted(allowed)}. "
            f"Received: {sorted(unknown)}"
        )
    return builders[name](
        input_shape, num_classes, "linear" if logits else "softmax", **kwargs
    )


def _image_input(input_shape, name):
    """`keras.Input` and the tensor with a channel axis added to `(H, W)` images."""
    shape = input_shape + (1,) if len(input_shape) == 2 else input_shape
    if len(shape) != 3:
        raise ValueError(
            f"Model {name!r} needs images of shape (H, W) or (H, W, C). "
            f"Received: input_shape={input_shape!r}"
        )
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Reshape(shape)(inputs) if shape != input_shape else inputs
    return inputs, x


def _cnn(input_shape, num_classes, activation):
    inputs, x = _image_input(input_shape, "cnn")
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(
        num_classes, activation=activation, kernel_initializer="glorot_uniform"
    )(x)
    return keras.Model(inputs, outputs, name="cnn")


@keras.saving.register_keras_serializable(package="keras_qsgld")
class ZeroPadShortcut(keras.layers.Layer):
    """He et al.'s option-A shortcut: subsample by `stride`, zero-pad the channels to `filters`."""

    def __init__(self, filters, stride, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.stride = int(stride)

    def call(self, x):
        x = x[:, :: self.stride, :: self.stride, :]
        extra = self.filters - x.shape[-1]
        if extra > 0:
            x = keras.ops.pad(
                x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]]
            )
        return x

    def compute_output_shape(self, input_shape):
        def sub(d):
            return None if d is None else -(-d // self.stride)

        return (
            input_shape[0],
            sub(input_shape[1]),
            sub(input_shape[2]),
            self.filters,
        )

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, stride=self.stride)
        return config


def _conv_bn(x, filters, stride, name):
    x = keras.layers.Conv2D(
        filters,
        3,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=f"{name}_conv",
    )(x)
    return keras.layers.BatchNormalization(
        momentum=0.9, epsilon=1e-5, name=f"{name}_bn"
    )(x)


def _cifar_resnet(input_shape, num_classes, activation, depth=50):
    if (
        isinstance(depth, bool)
        or not isinstance(depth, int)
        or depth < 8
        or (depth - 2) % 6
    ):
        raise ValueError(
            "Argument `depth` must be 6n + 2 with n >= 1 (8, 14, 20, 32, 44, 50, 56, 110, ...). "
            f"Received: depth={depth!r}"
        )
    n = (depth - 2) // 6
    inputs, x = _image_input(input_shape, "cifar_resnet")
    x = keras.layers.ReLU()(_conv_bn(x, 16, 1, "stem"))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(n):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}_block{block + 1}"
            y = keras.layers.ReLU()(_conv_bn(x, filters, stride, f"{name}_1"))
            y = _conv_bn(y, filters, 1, f"{name}_2")
            if stride != 1 or x.shape[-1] != filters:
                x = ZeroPadShortcut(filters, stride, name=f"{name}_shortcut")(x)
            x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(num_classes, activation=activation)(x)
    return keras.Model(inputs, outputs, name=f"cifar_resnet{depth}")


def _resnet50(input_shape, num_classes, activation):
    if len(input_shape) != 3 or min(input_shape[:2]) < 32:
        raise ValueError(
            "Model 'resnet50' needs images of shape (H, W, C) with H, W >= 32. "
            f"Received: input_shape={input_shape!r}"
        )
    if min(input_shape[:2]) < 64:
        warnings.warn(
            f"keras.applications.ResNet50 downsamples 32 times: at {input_shape[0]}x"
            f"{input_shape[1]} its last feature map is {input_shape[0] // 32}x"
            f"{input_shape[1] // 32}. For CIFAR, 'cifar_resnet' (He et al.'s CIFAR ResNet, "
            "the authors' 'ResNet-50') is the usual choice.",
            UserWarning,
            stacklevel=3,
        )
    return keras.applications.ResNet50(
        weights=None,
        input_shape=input_shape,
        classes=num_classes,
        classifier_activation=None if activation == "linear" else activation,
    )


def _mlp(input_shape, num_classes, activation, hidden=(128,)):
    hidden = tuple(hidden)
    if not all(
        isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden
    ):
        raise ValueError(
            f"Argument `hidden` must be a tuple of positive ints. Received: hidden={hidden!r}"
        )
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs)
    for width in hidden:
        x = keras.layers.Dense(width, activation="relu")(x)
    outputs = keras.layers.Dense(num_classes, activation=activation)(x)
    return keras.Model(inputs, outputs, name="mlp")


def _cnn1d(input_shape, num_classes, activation, filters=32):
    if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
        raise ValueError(
            f"Argument `filters` must be a positive int. Received: filters={filters!r}"
        )
    if len(input_shape) not in (1, 2):
        raise ValueError(
            f"Model 'cnn1d' needs sequences of shape (L,) or (L, C). Received: input_shape={input_shape!r}"
        )
    inputs = keras.Input(shape=input_shape)
    x = (
        keras.layers.Reshape(input_shape + (1,))(inputs)
        if len(input_shape) == 1
        else inputs
    )
    for _ in range(3):
        x = keras.layers.Conv1D(
            filters, 5, strides=2, padding="same", activation="relu"
        )(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(num_classes, activation=activation)(x)
    return keras.Model(inputs, outputs, name="cnn1d")
