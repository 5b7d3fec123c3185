"""`experiments.datasets`: the TFDS loaders under `tfds.testing.mock_data` (offline), the offline
data sets for real, the pipeline (shuffle, augmentation, batching), the resumed training stream,
the validation hold-out and the fast, clear error when a data set can't be downloaded.

The pipelines are tf.data whatever the Keras backend: these tests run on TensorFlow only (a
PyTorch test process must not load TensorFlow), and nothing here imports it at collection.
"""

import math
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import datasets
from experiments.datasets import (
    DatasetUnavailableError,
    hold_out,
    load_dataset,
    repeat_from_epoch,
)

pytestmark = pytest.mark.backends("tensorflow")

MOCK_N = 20


@pytest.fixture
def tfds():
    return pytest.importorskip("tensorflow_datasets")


def arrays(ds):
    """All of a batched (x, y) dataset as two NumPy arrays."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.concatenate(xs), np.concatenate(ys)


def raw_split(tfds, name, split):
    """The unscaled examples TFDS yields, in order (the reference for the scaling)."""
    builder = tfds.builder(name)
    ds = builder.as_dataset(
        split=split, as_supervised=True, shuffle_files=False
    )
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.stack(xs), np.stack(ys)


@pytest.mark.parametrize(
    "name, shape, classes",
    [
        ("fashion_mnist", (28, 28, 1), 10),
        ("cifar10", (32, 32, 3), 10),
        ("cifar100", (32, 32, 3), 100),
    ],
)
def test_tfds_loaders_under_mock_data(name, shape, classes, tfds):
    with tfds.testing.mock_data(
        num_examples=MOCK_N, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        bundle = load_dataset(name, batch_size=8, shuffle=False)
        raw_x, raw_y = raw_split(tfds, name, "test")
        x_test, y_test = arrays(bundle.test)
        x_train, _ = arrays(bundle.train)
    assert bundle.name == name and bundle.num_classes == classes
    assert bundle.input_shape == shape
    # info.splits is empty under the mock: the examples are counted.
    assert bundle.num_train == MOCK_N and bundle.num_test == MOCK_N
    assert bundle.steps_per_epoch == math.ceil(MOCK_N / 8)
    assert x_train.shape == (MOCK_N,) + shape and x_train.dtype == np.float32
    assert x_test.shape == (MOCK_N,) + shape
    # The authors' scaling: ToTensor() for FashionMNIST, Normalize(0.5, 0.5) for CIFAR.
    expected = raw_x.astype(np.float64) / 255.0
    if name != "fashion_mnist":
        expected = (expected - 0.5) / 0.5
    np.testing.assert_allclose(x_test, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(y_test, raw_y)
    assert y_test.dtype == np.int64


def test_tfds_max_examples_and_drop_remainder(tfds):
    with tfds.testing.mock_data(
        num_examples=MOCK_N, policy=tfds.testing.MockPolicy.USE_CODE
    ):
        bundle = load_dataset(
            "cifar10", batch_size=6, max_examples=15, drop_remainder=True
        )
        x_train, _ = arrays(bundle.train)
        x_test, _ = arrays(bundle.test)
    assert bundle.num_train == 15 and bundle.num_test == 15
    assert bundle.steps_per_epoch == 15 // 6
    assert (
        len(x_train) == 12
    )  # the last partial batch is dropped from training only
    assert len(x_test) == 15


def test_digits_for_real():
    from sklearn.datasets import load_digits

    bundle = load_dataset("digits", batch_size=100, shuffle=False)
    x_train, y_train = arrays(bundle.train)
    x_test, y_test = arrays(bundle.test)
    assert (bundle.num_train, bundle.num_test) == (1437, 360)
    assert bundle.steps_per_epoch == math.ceil(1437 / 100)
    assert bundle.input_shape == (8, 8, 1) and x_train.shape == (1437, 8, 8, 1)
    digits = load_digits()
    # The two splits are a partition of the 1797 images, scaled by 1/16.
    both = (
        np.concatenate([x_train, x_test]).reshape(1797, 64).astype(np.float64)
    )
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731  sort rows
    np.testing.assert_array_equal(key(both), key(digits.data / 16.0))
    np.testing.assert_array_equal(
        np.bincount(np.concatenate([y_train, y_test])),
        np.bincount(digits.target),
    )
    # Stratified: every class in the test split, in proportion.
    expected = 360 * np.bincount(digits.target) / 1797
    assert np.all(np.abs(np.bincount(y_test, minlength=10) - expected) <= 1)
    assert set(np.unique(y_train)) == set(range(10))


def test_mnist1d_for_real_and_global_rng_untouched():
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    bundle = load_dataset("mnist1d", batch_size=500, shuffle=False)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    data = make_dataset(get_dataset_args())
    x_train, y_train = arrays(bundle.train)
    x_test, y_test = arrays(bundle.test)
    assert (bundle.num_train, bundle.num_test) == (4000, 1000)
    assert bundle.input_shape == (40, 1)
    np.testing.assert_allclose(x_train[..., 0], data["x"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        x_test[..., 0], data["x_test"], rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(y_train, data["y"])
    np.testing.assert_array_equal(y_test, data["y_test"])


def test_shuffle_is_seeded_and_reshuffles_each_epoch():
    def order(seed, epochs=2):
        bundle = load_dataset(
            "digits", batch_size=512, seed=seed, max_examples=300
        )
        return [arrays(bundle.train)[0].reshape(300, -1) for _ in range(epochs)]

    a0, a1 = order(0)
    b0, b1 = order(0)
    c0, _ = order(1)
    np.testing.assert_array_equal(a0, b0)
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a0, a1)  # a new order each epoch
    assert not np.array_equal(a0, c0)  # another seed, another order
    plain = arrays(
        load_dataset(
            "digits", batch_size=512, shuffle=False, max_examples=300
        ).train
    )[0]
    key = lambda a: a[np.lexsort(a.T[::-1])]  # noqa: E731
    np.testing.assert_array_equal(
        key(a0), key(plain.reshape(300, -1))
    )  # same examples


def test_resumed_stream_gets_the_orders_of_an_uninterrupted_run():
    """`repeat_from_epoch(train, k)` starts with pass k of `train`: the same shuffle order and
    augmentation as an uninterrupted process's epoch k, in a freshly built pipeline."""

    def passes(stream, n, steps):
        it = iter(stream)
        return [
            np.concatenate([next(it)[0].numpy() for _ in range(steps)])
            for _ in range(n)
        ]

    def bundle():
        return load_dataset(
            "digits", batch_size=64, augment=True, seed=3, max_examples=200
        )

    steps = bundle().steps_per_epoch
    uninterrupted = passes(repeat_from_epoch(bundle().train), 4, steps)
    resumed = passes(repeat_from_epoch(bundle().train, 2), 2, steps)
    np.testing.assert_array_equal(resumed[0], uninterrupted[2])
    np.testing.assert_array_equal(resumed[1], uninterrupted[3])
    assert not np.array_equal(
        uninterrupted[1], uninterrupted[2]
    )  # each pass its own order
    with pytest.raises(ValueError, match="first_epoch"):
        repeat_from_epoch(bundle().train, -1)


def test_hold_out_is_a_fixed_split_of_known_length():
    bundle = load_dataset(
        "digits", batch_size=16, shuffle=False, max_examples=100
    )
    train, validation, num_train, steps = hold_out(bundle, 0.2, seed=1)
    assert (num_train, steps) == (80, 5)
    assert int(train.cardinality()) == 5 and int(validation.cardinality()) == 2
    first = np.concatenate([x.numpy() for x, _ in bundle.train])[:20]
    np.testing.assert_array_equal(
        np.concatenate([x.numpy() for x, _ in validation]), first
    )
    for fraction in (0, 1, 0.999):
        with pytest.raises(ValueError, match="fraction"):
            hold_out(
                load_dataset(
                    "digits", batch_size=16, shuffle=False, max_examples=5
                ),
                fraction,
            )


def test_augmentation_is_a_crop_of_the_padded_image():
    plain, _ = arrays(
        load_dataset(
            "digits", batch_size=64, shuffle=False, max_examples=64
        ).train
    )
    aug, _ = arrays(
        load_dataset(
            "digits",
            batch_size=64,
            shuffle=False,
            augment=True,
            max_examples=64,
        ).train
    )
    assert aug.shape == plain.shape
    moved = 0
    for p, a in zip(plain[..., 0], aug[..., 0]):
        padded = np.pad(p, 2)
        crops = [
            padded[i : i + 8, j : j + 8] for i in range(5) for j in range(5)
        ]
        assert any(np.array_equal(a, c) for c in crops)
        moved += not np.array_equal(a, p)
    assert moved > 0
    # test data is never augmented
    test_aug, _ = arrays(
        load_dataset(
            "digits", batch_size=64, augment=True, max_examples=64
        ).test
    )
    test_plain, _ = arrays(
        load_dataset("digits", batch_size=64, max_examples=64).test
    )
    np.testing.assert_array_equal(test_aug, test_plain)


def test_mnist1d_augmentation_is_a_circular_shift():
    plain, _ = arrays(
        load_dataset(
            "mnist1d", batch_size=64, shuffle=False, max_examples=32
        ).train
    )
    aug, _ = arrays(
        load_dataset(
            "mnist1d",
            batch_size=64,
            shuffle=False,
            augment=True,
            max_examples=32,
        ).train
    )
    for p, a in zip(plain[:, :, 0], aug[:, :, 0]):
        assert any(np.array_equal(a, np.roll(p, s)) for s in range(-4, 5))


def test_unreachable_download_fails_fast_and_names_data_dir(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(
        datasets, "host_reachable", lambda host, port, timeout=5.0: False
    )
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError, match="--data-dir") as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert time.perf_counter() - start < 60  # not TFDS' ~200 s of retries
    assert str(tmp_path) in str(info.value) and "can't be reached" in str(
        info.value
    )
    assert isinstance(info.value, RuntimeError)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch, tfds):
    monkeypatch.setattr(
        datasets, "host_reachable", lambda host, port, timeout=5.0: True
    )

    def refuse(self, *args, **kwargs):
        raise ConnectionError("Max retries exceeded")

    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", refuse
    )
    monkeypatch.setattr(datasets, "_tfds_is_mocked", lambda tfds: False)
    with pytest.raises(
        DatasetUnavailableError, match="ConnectionError.*--data-dir"
    ):
        load_dataset("fashion_mnist", data_dir=str(tmp_path))


def test_download_false(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        load_dataset("cifar100", data_dir=str(tmp_path), download=False)


def test_host_reachable_is_false_for_an_unresolvable_host():
    # .invalid never resolves (RFC 2606); the check must not hang.
    assert (
        datasets.host_reachable("qsgld-test.invalid", 80, timeout=3.0) is False
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="mnist"), "name"),
        (dict(name="digits", batch_size=0), "batch_size"),
        (dict(name="digits", max_examples=0), "max_examples"),
        (
            dict(name="digits", batch_size=2000, drop_remainder=True),
            "batch_size",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(**kwargs)


def test_import_is_cheap():
    code = (
        "import sys, keras_qsgld; "
        "print([m for m in ('tensorflow_datasets', 'mnist1d') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_prepared_data_is_used_without_any_network_check(
    tmp_path, monkeypatch, tfds
):
    import tensorflow as tf

    def no_network(*args, **kwargs):
        raise AssertionError(
            "the network must not be checked when the data is prepared"
        )

    images = np.arange(6 * 32 * 32 * 3, dtype=np.uint8).reshape(6, 32, 32, 3)
    labels = np.arange(6, dtype=np.int64)

    def as_dataset(self, split, as_supervised, shuffle_files):
        assert as_supervised and not shuffle_files
        return tf.data.Dataset.from_tensor_slices((images, labels))

    monkeypatch.setattr(datasets, "host_reachable", no_network)
    monkeypatch.setattr(datasets, "_tfds_is_mocked", lambda tfds: False)
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "is_prepared", lambda self: True
    )
    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", no_network
    )
    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_dataset", as_dataset)
    bundle = load_dataset(
        "cifar10",
        batch_size=4,
        data_dir=str(tmp_path),
        max_examples=5,
        shuffle=False,
    )
    # without split metadata in data_dir the examples are counted, capped by max_examples
    assert (bundle.num_train, bundle.num_test, bundle.steps_per_epoch) == (
        5,
        5,
        2,
    )
    x, y = arrays(bundle.test)
    np.testing.assert_allclose(x, (images[:5] / 255.0 - 0.5) / 0.5, atol=1e-6)
    np.testing.assert_array_equal(y, labels[:5])
    full = load_dataset("cifar10", batch_size=500, data_dir=str(tmp_path))
    assert (full.num_train, full.num_test, full.steps_per_epoch) == (6, 6, 1)


def test_download_check_goes_through_the_proxy(monkeypatch):
    for scheme in ("https", "http", "no", "all"):
        for var in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
            monkeypatch.delenv(var, raising=False)
    assert datasets.download_endpoint("cifar10") == ("www.cs.toronto.edu", 443)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert datasets.download_endpoint("cifar100") == ("proxy.example", 3128)
    assert datasets.download_endpoint("fashion_mnist")[0].startswith(
        "fashion-mnist"
    )  # http
    monkeypatch.setenv("http_proxy", "proxy2.example")
    assert datasets.download_endpoint("fashion_mnist") == ("proxy2.example", 80)
