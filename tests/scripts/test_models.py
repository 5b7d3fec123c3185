"""`experiments.models`: each model builds and trains one step; the architectures against hand
counts (the paper's CNN, He et al.'s CIFAR ResNet 6n+2), the option-A shortcut against NumPy,
seeding, save/load, and the argument errors."""

import keras
import numpy as np
import pytest

from experiments.models import MODELS, ZeroPadShortcut, build_model

SHAPES = {
    "cnn": (28, 28, 1),
    "cifar_resnet": (32, 32, 3),
    "resnet50": (32, 32, 3),
    "mlp": (8, 8, 1),
    "cnn1d": (40, 1),
}


def train_one_step(model, shape, classes, rng):
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss="sparse_categorical_crossentropy",
        jit_compile=False,
    )
    x = rng.normal(size=(4,) + shape).astype("float32")
    y = rng.integers(0, classes, size=4)
    before = [w.copy() for w in model.get_weights()]
    loss = float(model.train_on_batch(x, y))
    after = model.get_weights()
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    probs = model.predict(x, verbose=0)
    assert probs.shape == (4, classes)
    np.testing.assert_allclose(
        probs.sum(axis=1), 1.0, rtol=1e-5
    )  # softmax output
    return loss


@pytest.mark.parametrize("name", [m for m in MODELS if m != "resnet50"])
def test_each_model_builds_and_trains_one_step(name, rng):
    kwargs = {"depth": 8} if name == "cifar_resnet" else {}
    model = build_model(name, SHAPES[name], 10, seed=0, **kwargs)
    assert model.input_shape == (None,) + SHAPES[name]
    train_one_step(model, SHAPES[name], 10, rng)


# keras.applications' own model (the wrapper is backend-independent): 70 s to compile on JAX's CPU.
@pytest.mark.backends("tensorflow")
def test_resnet50_builds_trains_and_warns_about_its_1x1_map(rng):
    with pytest.warns(UserWarning, match="1x1"):
        model = build_model("resnet50", (32, 32, 3), 10, seed=0)
    assert model.name == "resnet50"
    # the last convolutional map is 1x1 at 32x32 (it downsamples 32 times)
    last_conv = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    ][-1]
    assert last_conv.output.shape[1:3] == (1, 1)
    train_one_step(model, (32, 32, 3), 10, rng)


def test_paper_cnn_architecture():
    model = build_model("cnn", (28, 28, 1), 10)
    convs = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    assert [c.filters for c in convs] == [32, 64]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert (
        sum(
            isinstance(layer, keras.layers.MaxPooling2D)
            for layer in model.layers
        )
        == 2
    )
    dense = model.layers[-1]
    assert dense.kernel.shape == (3136, 10)  # the authors' Linear(3136 -> 10)
    expected = (9 * 1 * 32 + 32) + (9 * 32 * 64 + 64) + (3136 * 10 + 10)
    assert model.count_params() == expected


def resnet_trainable_count(n, in_channels, classes):
    """He et al.'s CIFAR ResNet 6n+2 (option A: parameter-free shortcuts), counted by hand."""
    count = (
        9 * in_channels * 16 + 2 * 16
    )  # stem conv (no bias) + BN gamma, beta
    previous = 16
    for width in (16, 32, 64):
        for _ in range(n):
            count += (
                9 * previous * width + 2 * width + 9 * width * width + 2 * width
            )
            previous = width
    return count + 64 * classes + classes


@pytest.mark.parametrize("depth, classes", [(8, 10), (20, 10), (50, 100)])
def test_cifar_resnet_architecture(depth, classes):
    n = (depth - 2) // 6
    model = build_model("cifar_resnet", (32, 32, 3), classes, depth=depth)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == resnet_trainable_count(n, 3, classes)
    if depth == 20:
        assert trainable == 269_722  # ResNet-20's well-known 0.27 M weights
    convs = [
        layer
        for layer in model.layers
        if isinstance(layer, keras.layers.Conv2D)
    ]
    dense = [
        layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
    ]
    assert len(convs) + len(dense) == depth  # weighted layers: depth = 6n + 2
    assert [c.filters for c in convs] == [16] + [16] * 2 * n + [32] * 2 * n + [
        64
    ] * 2 * n
    assert sorted({c.strides for c in convs}) == [(1, 1), (2, 2)]
    assert sum(c.strides == (2, 2) for c in convs) == 2
    assert all(not c.use_bias for c in convs)
    assert model.layers[-2].output.shape[1:] == (64,)


def test_cifar_resnet_default_depth_is_50():
    model = build_model("cifar_resnet", (32, 32, 3), 10)
    assert model.name == "cifar_resnet50"
    assert (
        sum(isinstance(layer, keras.layers.Conv2D) for layer in model.layers)
        == 49
    )


def test_zero_pad_shortcut_against_numpy(rng):
    x = rng.normal(size=(2, 8, 8, 16)).astype("float32")
    out = keras.ops.convert_to_numpy(ZeroPadShortcut(32, 2)(x))
    expected = np.zeros((2, 4, 4, 32), "float32")
    expected[..., 8:24] = x[:, ::2, ::2, :]
    np.testing.assert_array_equal(out, expected)
    assert ZeroPadShortcut(32, 2).compute_output_shape((None, 8, 8, 16)) == (
        None,
        4,
        4,
        32,
    )


def test_cifar_resnet_save_and_load(tmp_path, rng):
    model = build_model("cifar_resnet", (32, 32, 3), 10, depth=8, seed=0)
    x = rng.normal(size=(2, 32, 32, 3)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6
    )


def test_seed_gives_the_same_initial_weights():
    a = build_model("mlp", (8, 8, 1), 10, seed=3).get_weights()
    b = build_model("mlp", (8, 8, 1), 10, seed=3).get_weights()
    c = build_model("mlp", (8, 8, 1), 10, seed=4).get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_logits_output(rng):
    model = build_model("mlp", (8, 8, 1), 10, logits=True, hidden=(16, 16))
    x = rng.normal(size=(3, 8, 8, 1)).astype("float32")
    out = model.predict(x, verbose=0)
    assert not np.allclose(out.sum(axis=1), 1.0)
    assert [
        layer.units
        for layer in model.layers
        if isinstance(layer, keras.layers.Dense)
    ] == [16, 16, 10]


def test_images_without_channel_axis(rng):
    model = build_model("cnn", (8, 8), 10)
    assert model.predict(
        rng.normal(size=(2, 8, 8)).astype("float32"), verbose=0
    ).shape == (2, 10)
    model = build_model("cnn1d", (40,), 10)
    assert model.predict(
        rng.normal(size=(2, 40)).astype("float32"), verbose=0
    ).shape == (2, 10)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (("vgg", (32, 32, 3), 10), {}, "name"),
        (("cifar_resnet", (32, 32, 3), 10), {"depth": 18}, "depth"),
        (("cifar_resnet", (32, 32, 3), 10), {"width": 2}, "keyword"),
        (("resnet50", (28, 28, 1), 10), {}, "32"),
        (("cnn", (40, 1, 1, 1), 10), {}, "input_shape"),
        (("cnn1d", (8, 8, 1), 10), {}, "input_shape"),
        (("mlp", (8, 8, 1), 1), {}, "num_classes"),
        (("mlp", (8, 8, 1), 10), {"hidden": (0,)}, "hidden"),
    ],
)
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(*args, **kwargs)
