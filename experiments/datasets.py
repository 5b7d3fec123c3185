"""Data sets for the examples, the tuning scripts and the benchmarks (one home for all).

`load_dataset(name, ...)` returns a `DatasetBundle` of batched `tf.data` pipelines:

- `"fashion_mnist"`, `"cifar10"`, `"cifar100"`: through tensorflow-datasets (downloaded on
  first use into `data_dir`, default `~/tensorflow_datasets`). Pixels are scaled as in the
  authors' code: FashionMNIST to [0, 1] (`ToTensor()`), CIFAR to [-1, 1]
  (`Normalize((0.5,) * 3, (0.5,) * 3)`). When the data is not prepared in `data_dir` and
  the download server can't be reached, `DatasetUnavailableError` is raised within seconds
  (rather than after minutes of retries) naming `--data-dir` / `data_dir`.
- `"digits"`: scikit-learn's 8x8 handwritten digits (1797 images, shipped with
  scikit-learn, no download), scaled to [0, 1]; a fixed stratified split of 1437 train /
  360 test examples.
- `"mnist1d"`: MNIST-1D (Greydanus, 2020) generated locally by the `mnist1d` package's
  `make_dataset` with its default arguments (4000 train / 1000 test sequences of length
  40, standardised), no download.

The pipeline is the canonical tf.data one: cache, shuffle (`seed`, reshuffled each epoch),
optional augmentation, batch, scale, prefetch. The images are cached as `uint8` and scaled
per batch, which keeps CIFAR's cache at 150 MB instead of 600 MB; the result equals scaling
first.

`repeat_from_epoch(train, first_epoch)` is the training stream of a run that resumes after
`first_epoch` finished epochs (it sees the shuffle orders of an uninterrupted run), and
`hold_out(bundle, fraction)` splits validation data off the training set.

TensorFlow is imported when a pipeline is built, not with this module: a PyTorch-backend
process may import it (for `DATASETS`, or through a script) before it decides to load data,
and TensorFlow must come after torch in a process, if at all. tensorflow-datasets,
scikit-learn and mnist1d are imported only by the loader that needs them (each is needed
by some data sets only).
"""

import dataclasses
import functools
import logging
import math
import random
import socket
import threading
import urllib.parse
import urllib.request

import numpy as np

DATASETS = ("fashion_mnist", "cifar10", "cifar100", "digits", "mnist1d")
TFDS_DATASETS = ("fashion_mnist", "cifar10", "cifar100")
OFFLINE_DATASETS = ("digits", "mnist1d")

DIGITS_TEST_SIZE = 360  # of scikit-learn's 1797 digits: 1437 train / 360 test
NUM_CLASSES = {
    "fashion_mnist": 10,
    "cifar10": 10,
    "cifar100": 100,
    "digits": 10,
    "mnist1d": 10,
}
INPUT_SHAPES = {
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "digits": (8, 8, 1),
    "mnist1d": (40, 1),
}
# (host, port) that tensorflow-datasets downloads each data set from.
DOWNLOAD_HOSTS = {
    "fashion_mnist": (
        "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        80,
    ),
    "cifar10": ("www.cs.toronto.edu", 443),
    "cifar100": ("www.cs.toronto.edu", 443),
}
SHUFFLE_BUFFER = 10000
CONNECT_TIMEOUT_S = 5.0


class DatasetUnavailableError(RuntimeError):
    """The data set is neither prepared in `data_dir` nor downloadable from here."""


@dataclasses.dataclass
class DatasetBundle:
    """A data set ready for `model.fit`.

    Attributes:
        name: the data set's name, one of `DATASETS`.
        train: batched `tf.data.Dataset` of `(x, y)` (shuffled if asked), `y` int labels.
        test: batched `tf.data.Dataset` of `(x, y)`, never shuffled or augmented.
        num_classes: number of classes.
        input_shape: shape of one example `x`, e.g. `(32, 32, 3)`.
        num_train: number of training examples (after `max_examples`).
        num_test: number of test examples (after `max_examples`).
        batch_size: the batch size.
        steps_per_epoch: batches per epoch of `train` (what the QSGLD schedules need).
    """

    name: str
    train: object
    test: object
    num_classes: int
    input_shape: tuple
    num_train: int
    num_test: int
    batch_size: int
    steps_per_epoch: int


def load_dataset(
    name,
    batch_size=128,
    data_dir=None,
    augment=False,
    shuffle=True,
    seed=0,
    drop_remainder=False,
    max_examples=None,
    download=True,
):
    """Loads a data set as batched, prefetched `tf.data` pipelines.

    Args:
        name: one of `DATASETS`: "fashion_mnist", "cifar10", "cifar100" (tensorflow-datasets),
            "digits" (scikit-learn), "mnist1d" (generated locally).
        batch_size: int > 0. Default 128.
        data_dir: folder of tensorflow-datasets data (default: TFDS' own,
            `~/tensorflow_datasets`). Ignored by the offline data sets.
        augment: bool. If True, training images get a random crop after 4 (CIFAR) or 2
            (FashionMNIST, digits) pixels of zero padding, and CIFAR a random horizontal
            flip; mnist1d a random circular shift of up to 4 steps. Default False (the paper).
        shuffle: bool, shuffle the training set each epoch. Default True (the authors'
            code does not shuffle: the paper presets pass False).
        seed: int, seed of the shuffling and augmentation. Default 0.
        drop_remainder: bool, drop the last partial training batch (the authors' code
            does). Default False. The test set keeps all its examples.
        max_examples: None or int > 0: use only the first `max_examples` examples of each
            split (quick runs and tests).
        download: bool. If False, a data set not prepared in `data_dir` raises
            `DatasetUnavailableError` instead of downloading. Default True.

    Returns:
        A `DatasetBundle`.

    Raises:
        ValueError: on an unknown name or a bad argument.
        DatasetUnavailableError: a tensorflow-datasets data set is not prepared in
            `data_dir` and can't be downloaded (no network), or `download=False`.
    """
    if name not in DATASETS:
        raise ValueError(
            f"Argument `name` must be one of {DATASETS}. Received: name={name!r}"
        )
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(
            f"Argument `batch_size` must be a positive int. Received: batch_size={batch_size!r}"
        )
    if max_examples is not None and (
        isinstance(max_examples, bool)
        or not isinstance(max_examples, int)
        or max_examples < 1
    ):
        raise ValueError(
            "Argument `max_examples` must be None or a positive int. "
            f"Received: max_examples={max_examples!r}"
        )
    if name in TFDS_DATASETS:
        train, test, num_train, num_test = _tfds_splits(
            name, data_dir, max_examples, download
        )
    else:
        loader = _digits_arrays if name == "digits" else _mnist1d_arrays
        x_train, y_train, x_test, y_test = loader()
        if max_examples is not None:
            x_train, y_train = x_train[:max_examples], y_train[:max_examples]
            x_test, y_test = x_test[:max_examples], y_test[:max_examples]
        import tensorflow as tf

        train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
        test = tf.data.Dataset.from_tensor_slices((x_test, y_test))
        num_train, num_test = len(y_train), len(y_test)
    if drop_remainder and num_train < batch_size:
        raise ValueError(
            f"With drop_remainder=True, `batch_size` ({batch_size}) must not exceed the "
            f"{num_train} training examples. Received: batch_size={batch_size!r}"
        )
    train = _pipeline(
        name,
        train,
        batch_size,
        training=True,
        augment=augment,
        shuffle=shuffle,
        seed=seed,
        drop_remainder=drop_remainder,
        num_examples=num_train,
    )
    test = _pipeline(name, test, batch_size, training=False)
    steps = (
        num_train // batch_size
        if drop_remainder
        else math.ceil(num_train / batch_size)
    )
    return DatasetBundle(
        name=name,
        train=train,
        test=test,
        num_classes=NUM_CLASSES[name],
        input_shape=INPUT_SHAPES[name],
        num_train=int(num_train),
        num_test=int(num_test),
        batch_size=batch_size,
        steps_per_epoch=int(steps),
    )


def repeat_from_epoch(train, first_epoch=0):
    """`train` repeated without end, its first `first_epoch` passes skipped.

    For `model.fit(repeat_from_epoch(bundle.train, k), steps_per_epoch=bundle.steps_per_epoch)`
    in a run that resumes after `k` finished epochs. A seeded `tf.data` shuffle (and the
    augmentation's random stream) draws a new order each time the dataset is iterated, in a
    fixed sequence: pass `p` of `train` is the same in every process. A restarted process
    builds the pipeline anew, so without this its first epoch would replay pass 0. This
    draws, and drops, the first `first_epoch` passes' seeds by starting as many iterators
    (which reads no data beyond a prefetch), then repeats `train`.

    Given `steps_per_epoch`, `fit` starts a single iterator of the stream for the whole run
    (on JAX and PyTorch one more before it, for one batch of the model's symbolic build, in
    an uninterrupted and a resumed run alike), so the resumed run's epochs get the passes
    the uninterrupted run's epochs got, on every backend. With `fit(train, epochs=...)`
    that would hang on Keras' own count: Keras 3.15 starts two iterators of a finite
    dataset per epoch on TensorFlow (one used, one started at the epoch's end and dropped),
    one on JAX and PyTorch (whose end-of-epoch iterator is lazy and never starts).

    Args:
        train: a `tf.data.Dataset`, one epoch of batches.
        first_epoch: int >= 0, the number of finished epochs.

    Returns:
        `train.repeat()` after `first_epoch` passes' seeds have been drawn.
    """
    if (
        isinstance(first_epoch, bool)
        or not isinstance(first_epoch, int)
        or first_epoch < 0
    ):
        raise ValueError(
            f"Argument `first_epoch` must be an int >= 0. Received: first_epoch={first_epoch!r}"
        )
    for _ in range(first_epoch):
        iter(train)
    return train.repeat()


def hold_out(bundle, fraction, seed=0):
    """Splits validation data off the training set of `bundle`.

    The first `round(fraction * num_train)` examples of `bundle.train` (at least one) are
    the validation data, the same ones in every process and every epoch; the rest are the
    training data, reshuffled each epoch with `seed`. Load `bundle` with `shuffle=False` and
    `augment=False`, so that its first examples are always the same.

    Args:
        bundle: a `DatasetBundle` from `load_dataset(..., shuffle=False, augment=False)`.
        fraction: real number in (0, 1), the share of the training examples held out.
        seed: int, seed of the training data's shuffling. Default 0.

    Returns:
        `(train, validation, num_train, steps_per_epoch)`: two batched `tf.data.Dataset`s
        of known length, the number of examples trained on, and batches per epoch of `train`.

    Raises:
        ValueError: if `fraction` is out of range or leaves no training examples.
    """
    import tensorflow as tf

    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 < fraction < 1
    ):
        raise ValueError(
            f"Argument `fraction` must be a number in (0, 1). Received: fraction={fraction!r}"
        )
    num_val = max(1, int(round(fraction * bundle.num_train)))
    num_train = bundle.num_train - num_val
    if num_train < 1:
        raise ValueError(
            f"Argument `fraction` leaves no training data: {num_val} of {bundle.num_train} "
            f"examples held out. Received: fraction={fraction!r}"
        )
    # `unbatch` loses the length, and with an unknown length Keras 3 counts one optimizer
    # step too many per epoch (the step that finds the data exhausted), which would shift
    # QSGLD's schedules: state the sizes.
    examples = bundle.train.unbatch()
    validation = (
        examples.take(num_val)
        .apply(tf.data.experimental.assert_cardinality(num_val))
        .batch(bundle.batch_size)
        .cache()
    )
    train = (
        examples.skip(num_val)
        .apply(tf.data.experimental.assert_cardinality(num_train))
        .shuffle(
            min(num_train, SHUFFLE_BUFFER),
            seed=seed,
            reshuffle_each_iteration=True,
        )
        .batch(bundle.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    return (
        train,
        validation,
        num_train,
        math.ceil(num_train / bundle.batch_size),
    )


# -- tensorflow-datasets ---------------------------------------------------------------
def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "tensorflow-datasets is needed for fashion_mnist, cifar10 and cifar100: "
            "pip install 'keras-qsgld[examples]'"
        ) from error
    return tfds


def _tfds_is_mocked(tfds):
    # Under `tfds.testing.mock_data`, download_and_prepare is a no-op from the testing module.
    method = tfds.core.DatasetBuilder.download_and_prepare
    return (
        getattr(method, "__module__", "") != tfds.core.DatasetBuilder.__module__
    )


def host_reachable(host, port, timeout=CONNECT_TIMEOUT_S):
    """True if a TCP connection to `host:port` opens within `timeout` seconds (DNS included)."""
    result = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def download_endpoint(name):
    """(host, port) to check before downloading `name`: its server, or the proxy for it."""
    host, port = DOWNLOAD_HOSTS[name]
    proxy = urllib.request.getproxies().get("https" if port == 443 else "http")
    if proxy and not urllib.request.proxy_bypass(host):
        parts = urllib.parse.urlsplit(
            proxy if "://" in proxy else "http://" + proxy
        )
        if parts.hostname:
            return parts.hostname, parts.port or (
                443 if parts.scheme == "https" else 80
            )
    return host, port


def _unavailable(name, data_dir, reason):
    where = data_dir or "~/tensorflow_datasets (the default)"
    return DatasetUnavailableError(
        f"Data set {name!r} is not prepared in data_dir={where} and {reason}. Download it "
        f'on a machine with internet access (python -c "import tensorflow_datasets as tfds; '
        f"tfds.builder('{name}', data_dir='DIR').download_and_prepare()\"), copy DIR here and "
        f"point at it with --data-dir DIR (data_dir=DIR in Python). The offline data sets "
        f"{OFFLINE_DATASETS} need no download."
    )


def _is_prepared(builder):
    """`builder.is_prepared()` without TFDS' warning that the data's folder "has no
    dataset_info.json" (absl logs it when the folder is absent; what follows says more)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        return builder.is_prepared()
    finally:
        logger.setLevel(level)


def _tfds_splits(name, data_dir, max_examples, download):
    tfds = _import_tfds()
    import tensorflow as tf

    builder = tfds.builder(name, data_dir=data_dir)
    if not _tfds_is_mocked(tfds) and not _is_prepared(builder):
        if not download:
            raise _unavailable(name, data_dir, "download=False")
        host, port = download_endpoint(name)
        if not host_reachable(host, port):
            what = (
                "its download server"
                if host == DOWNLOAD_HOSTS[name][0]
                else "the proxy"
            )
            raise _unavailable(
                name, data_dir, f"{what} {host}:{port} can't be reached"
            )
        try:
            builder.download_and_prepare()
        except Exception as error:  # network errors come in many types (requests, urllib3, OSError)
            raise _unavailable(
                name,
                data_dir,
                f"the download failed ({type(error).__name__}: {error})",
            ) from error
    splits = []
    for split in ("train", "test"):
        ds = builder.as_dataset(
            split=split, as_supervised=True, shuffle_files=False
        )
        try:
            count = int(builder.info.splits[split].num_examples)
        except (KeyError, TypeError):
            count = 0
        if max_examples is not None:
            ds = ds.take(max_examples)
        if count <= 0 or (max_examples is not None and max_examples > count):
            count = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
        elif max_examples is not None:
            count = min(count, max_examples)
        splits.append((ds, count))
    (train, num_train), (test, num_test) = splits
    return train, test, num_train, num_test


# -- offline data sets -----------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_arrays():
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "scikit-learn is needed for 'digits': pip install scikit-learn"
        ) from error
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[
        ..., None
    ]  # (1797, 8, 8, 1) in [0, 1]
    y = digits.target.astype("int64")
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_SIZE, stratify=y, random_state=0
    )
    arrays = tuple(
        np.ascontiguousarray(a) for a in (x_train, y_train, x_test, y_test)
    )
    for a in arrays:
        a.flags.writeable = False  # cached: shared by every call
    return arrays


@functools.lru_cache(maxsize=1)
def _mnist1d_arrays():
    """MNIST-1D's arrays, generated once per process (it takes seconds)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError(
            "mnist1d is needed for 'mnist1d': pip install mnist1d"
        ) from error

    # make_dataset seeds NumPy's and Python's global generators: restore them afterwards.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    x_train = data["x"].astype("float32")[..., None]  # (4000, 40, 1)
    x_test = data["x_test"].astype("float32")[..., None]
    arrays = (
        x_train,
        data["y"].astype("int64"),
        x_test,
        data["y_test"].astype("int64"),
    )
    for a in arrays:
        a.flags.writeable = False  # cached: shared by every call
    return arrays


# -- the pipeline ----------------------------------------------------------------------
def _scale(name):
    """Maps a batch of raw examples to float32 in the authors' range."""
    import tensorflow as tf

    def scale(x, y):
        x = tf.cast(x, tf.float32)
        if name == "fashion_mnist":
            x = x / 255.0
        elif name in ("cifar10", "cifar100"):
            x = (x / 255.0 - 0.5) / 0.5
        return x, tf.cast(y, tf.int64)

    return scale


def _augmenter(name):
    """Per-example random augmentation from a stateless seed of shape (2,)."""
    import tensorflow as tf

    shape = INPUT_SHAPES[name]
    if name == "mnist1d":

        def augment(x, y, seed):
            shift = tf.random.stateless_uniform((), seed, -4, 5, dtype=tf.int32)
            return tf.roll(x, shift, axis=0), y

        return augment
    pad = 4 if name in ("cifar10", "cifar100") else 2
    flip = name in ("cifar10", "cifar100")

    def augment(x, y, seed):
        seeds = tf.random.experimental.stateless_split(seed, 2)
        x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]])
        x = tf.image.stateless_random_crop(x, shape, seeds[0])
        if flip:
            x = tf.image.stateless_random_flip_left_right(x, seeds[1])
        return x, y

    return augment


def _pipeline(
    name,
    ds,
    batch_size,
    training,
    augment=False,
    shuffle=False,
    seed=0,
    drop_remainder=False,
    num_examples=None,
):
    import tensorflow as tf

    ds = ds.cache()
    if training and shuffle:
        buffer = min(num_examples or SHUFFLE_BUFFER, SHUFFLE_BUFFER)
        ds = ds.shuffle(
            max(buffer, 1), seed=seed, reshuffle_each_iteration=True
        )
    if training and augment:
        seeds = tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True
        ).batch(2)
        fn = _augmenter(name)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            lambda xy, s: fn(xy[0], xy[1], s),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder and training)
    ds = ds.map(_scale(name), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
