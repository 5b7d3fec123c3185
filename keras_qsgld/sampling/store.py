"""Where posterior samples live: in memory (weight lists) or as `.weights.h5` files.

The one place that knows the two forms of a sample: `PosteriorSampler` keeps them with
`keep_in_memory` and `write_file`, and `posterior_predictive` reads either back with
`load_sample`. A folder holds one chain: `sample-<update>.weights.h5` per sample, written
atomically (to a temporary name of this process, then renamed), so a killed write never
leaves a truncated sample.
"""

import contextlib
import os
import re

import keras
import numpy as np

SAMPLE_FILE = re.compile(r"^sample-(\d+)\.weights\.h5$")
_TEMPORARY_FILE = re.compile(r"^\.tmp-sample-(\d+)-(\d+)\.weights\.h5$")


def sample_file_name(update):
    """The file name of the sample taken after optimizer update `update`."""
    return f"sample-{update:09d}.weights.h5"


def scan(directory):
    """`{update: path}` of the sample files in `directory` (empty if it does not exist)."""
    found = {}
    if directory is None or not os.path.isdir(directory):
        return found
    for name in os.listdir(directory):
        match = SAMPLE_FILE.match(name)
        if match:
            found[int(match.group(1))] = os.path.join(directory, name)
    return found


def remove_temporary_files(directory):
    """Deletes the leftovers of writes that were killed."""
    for name in os.listdir(directory):
        if _TEMPORARY_FILE.match(name):
            os.remove(os.path.join(directory, name))


def keep_in_memory(model):
    """The model's weights (`get_weights()`: trainable or not) as a list of NumPy arrays."""
    # Copies: on the torch backend get_weights() can share memory with the variables.
    return [np.array(w, copy=True) for w in model.get_weights()]


def _optimizer_to_skip(model):
    optimizer = getattr(model, "optimizer", None)
    return [optimizer] if optimizer is not None else None


def write_file(model, directory, update):
    """Writes the model's weights (not the optimizer's state) as the sample of update
    `update`; returns its path."""
    path = os.path.join(directory, sample_file_name(update))
    # A name of this process's own (several workers may write the same sample), then an
    # atomic rename: a killed write never leaves a truncated sample file.
    temporary = os.path.join(
        directory, f".tmp-sample-{update:09d}-{os.getpid()}.weights.h5"
    )
    keras.saving.save_weights(
        model, temporary, objects_to_skip=_optimizer_to_skip(model)
    )
    os.replace(temporary, path)
    return path


@contextlib.contextmanager
def restoring_weights(model):
    """Restores the model's own weights on leaving, also when an error interrupts: for the
    readers that set a model's weights to each sample in turn."""
    original = keep_in_memory(model)
    try:
        yield
    finally:
        model.set_weights(original)


def load_sample(model, sample, index):
    """Sets the model's weights to `sample`: a weight list of its weights, or a
    `.weights.h5` path. `index`: its place in the caller's list, for the messages."""
    if isinstance(sample, (str, os.PathLike)):
        path = os.fspath(sample)
        if not path.endswith(".weights.h5"):
            raise ValueError(
                f"Argument `samples` holds a path that is not a .weights.h5 file. Received: "
                f"samples[{index}]={path!r}"
            )
        if not os.path.isfile(path):
            raise ValueError(
                f"Argument `samples` holds a path that does not exist. Received: samples[{index}]={path!r}"
            )
        model.load_weights(path, objects_to_skip=_optimizer_to_skip(model))
        return
    check_weight_list(sample, index, model.weights)
    model.set_weights(list(sample))


def check_weight_list(sample, index, weights):
    """A `ValueError` unless `sample` is a list of arrays of the shapes of `weights` (the
    model's weights, in order)."""
    if not isinstance(sample, (list, tuple)) or len(sample) != len(weights):
        if isinstance(sample, (list, tuple)):
            what = f"a list of {len(sample)} arrays"
        else:
            what = type(sample).__name__
        raise ValueError(
            f"Argument `samples` must hold weight lists of the model's {len(weights)} weights "
            f"(model.get_weights()) or .weights.h5 paths. Received: samples[{index}] is {what}"
        )
    for weight, value in zip(weights, sample):
        if np.shape(value) != tuple(weight.shape):
            raise ValueError(
                "Argument `samples` must hold weight lists that fit the model. "
                f"Received: samples[{index}] holds an array of shape "
                f"{np.shape(value)} for {weight.path!r}, of shape "
                f"{tuple(weight.shape)}"
            )


def is_chain(value):
    """A sampler (anything with a `samples` attribute) stands for its chain's samples."""
    return hasattr(value, "samples") and not isinstance(value, (list, tuple))


def is_chain_list(value):
    """A list of samples itself (a chain as `to_inference_data` takes it): its first item
    is a weight list or a path, where a sample's first item is an array."""
    return (
        isinstance(value, (list, tuple))
        and len(value) > 0
        and isinstance(value[0], (list, tuple, str, os.PathLike))
    )


def sample_list(samples):
    """The samples of a list, of a sampler (anything with a `samples` attribute) or of a
    list of chains, each a sampler or a list of samples (pooled), checked to be a non-empty
    sequence."""
    if is_chain(samples):
        samples = samples.samples
    elif isinstance(samples, (list, tuple)) and any(
        is_chain(c) or is_chain_list(c) for c in samples
    ):
        samples = [
            s
            for chain in samples
            for s in (
                chain.samples
                if is_chain(chain)
                else chain
                if is_chain_list(chain)
                else [chain]
            )
        ]
    if isinstance(samples, (str, os.PathLike, np.ndarray)) or not hasattr(
        samples, "__iter__"
    ):
        raise ValueError(
            "Argument `samples` must be a list of samples (weight lists or .weights.h5 paths) "
            f"or a PosteriorSampler. Received: samples of type {type(samples).__name__}"
        )
    samples = list(samples)
    if not samples:
        raise ValueError(
            "Argument `samples` must hold at least one sample. Received: samples=[]"
        )
    return samples
