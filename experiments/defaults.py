"""The one table of defaults that the example, tuning and benchmark scripts share.

- `DEFAULT_MODEL`: the model each data set gets when a script is not told one, and
  `DEFAULT_DEPTH` the CIFAR ResNet's depth.
- `DEFAULT_LEARNING_RATE`: each optimizer's learning rate when a script is not told one
  (QSGLD's and QAdam's are those of SGD and Adam, whose steps they quantize), and
  `DEFAULT_LEARNING_RATE_BY_DATASET` the rates measured to work for each optimizer on an
  offline data set (`tuning.learning_rates`), which win there: `default_learning_rate`.
- `PAPER_PRESETS`: the authors' protocol per data set (`shared/research/paper.md` s7.2,
  from their released code).

The optimizers' own hyperparameter defaults (`eta`, `base`, `kappa`, `tau0`, the warm-up
fraction) live with the schedules, in `keras_qsgld.schedules` (`DEFAULT_ETA`, ...).
"""

DEFAULT_MODEL = {
    "fashion_mnist": "cnn",
    "cifar10": "cifar_resnet",
    "cifar100": "cifar_resnet",
    "digits": "mlp",
    "mnist1d": "cnn1d",
}

DEFAULT_DEPTH = 50  # of cifar_resnet, 6n + 2: the authors' "ResNet-50"

DEFAULT_LEARNING_RATE = {
    "qsgld": 0.01,
    "qadam": 0.001,
    "sgd": 0.01,
    "adam": 0.001,
    "adamw": 0.001,
    "nadam": 0.001,
    "rmsprop": 0.001,
    "adagrad": 0.001,
    "adamax": 0.001,
    "adadelta": 0.001,
    "lion": 0.0001,
}

# Measured: `python -m tuning.learning_rates --dataset DATASET` (KerasTuner grid search,
# 20 epochs at batch 128 as in the README's first comparison, the best held-out accuracy on
# a fifth of the training split; TensorFlow, seed 0); the scores are in docs/tuning.md.
DEFAULT_LEARNING_RATE_BY_DATASET = {
    "digits": {"qsgld": 0.3, "sgd": 1.0, "adam": 0.03, "qadam": 0.03},
    "mnist1d": {"qsgld": 0.3, "sgd": 0.3, "adam": 0.01, "qadam": 0.01},
}


def default_learning_rate(optimizer, dataset=None):
    """The learning rate of `optimizer` when a script is not told one: the rate measured on
    `dataset` if there is one, else the optimizer's own default."""
    measured = DEFAULT_LEARNING_RATE_BY_DATASET.get(dataset, {})
    return measured.get(optimizer, DEFAULT_LEARNING_RATE[optimizer])


# Batch size, epochs, learning rates; no augmentation, no shuffling, the last partial batch
# dropped. Values given on a command line win over the preset's.
PAPER_PRESETS = {
    "paper-fashion-mnist": dict(
        dataset="fashion_mnist",
        model="cnn",
        batch_size=100,
        epochs=200,
        lr=0.01,
        lr_per_optimizer={"adam": 0.02},
        optimizer="qsgld,sgd,adam",
        augment=False,
        shuffle=False,
        drop_remainder=True,
    ),
    "paper-cifar10": dict(
        dataset="cifar10",
        model="cifar_resnet",
        depth=50,
        batch_size=128,
        epochs=200,
        lr=0.01,
        optimizer="qsgld,qadam,sgd,adam,adamw,nadam",
        augment=False,
        shuffle=False,
        drop_remainder=True,
    ),
    "paper-cifar100": dict(
        dataset="cifar100",
        model="cifar_resnet",
        depth=50,
        batch_size=100,
        epochs=200,
        lr=0.01,
        optimizer="qsgld,qadam,sgd,adam,adamw,nadam",
        augment=False,
        shuffle=False,
        drop_remainder=True,
    ),
}
