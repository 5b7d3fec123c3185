"""A short run of the paper's CIFAR protocol with QSGLD and SGD (meant for a GPU machine).

The authors' protocol (paper.md s7.2): CIFAR-10, the CIFAR ResNet-50 (6n+2, n = 8), batch
128, no augmentation, no shuffling, last partial batch dropped, constant learning rate 0.01
for both optimizers, QSGLD with eta = 2^19 and tau0 = 0.2 x the epoch budget. Here the
budget is `--epochs` (short), so it is a smoke-scale reproduction, not the paper's
200-epoch run.

Real CIFAR needs tensorflow-datasets with internet or a prepared `--data-dir`. Without
either the table says so, unless `--synthetic` is given (random data of CIFAR's shape:
it proves the pipeline, its accuracies mean nothing). `--quick` implies `--synthetic` and a
CIFAR ResNet-8.
"""

import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import common

common.setup_environment()

TABLES = ("cifar",)


def build_parser():
    p = common.parser(__doc__.split("\n\n")[0], TABLES, "results/benchmarks/cifar")
    p.add_argument("--dataset", default="cifar10", help="cifar10 or cifar100")
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data folder")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--depth", type=int, default=50, help="CIFAR ResNet depth (6n+2)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--optimizers", default="sgd,qsgld")
    p.add_argument("--synthetic", action="store_true", help="random data of CIFAR's shape")
    p.add_argument("--jit-compile", default="auto", help="model.compile(jit_compile=...): auto, true, false")
    return p


def synthetic_bundle(dataset, n_train, n_test, batch, seed):
    import numpy as np
    import tensorflow as tf

    from keras_qsgld.experiments.datasets import DatasetBundle

    classes = 100 if dataset == "cifar100" else 10
    rng = np.random.default_rng(seed)

    def split(n):
        x = rng.uniform(-1, 1, (n, 32, 32, 3)).astype("float32")
        y = rng.integers(0, classes, n).astype("int64")
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=False)

    return DatasetBundle(
        name=f"synthetic-{dataset}", train=split(n_train), test=split(n_test), num_classes=classes,
        input_shape=(32, 32, 3), num_train=n_train, num_test=n_test, batch_size=batch,
        steps_per_epoch=-(-n_train // batch),
    )


def main(argv=None):
    args = common.finish_args(build_parser().parse_args(argv))
    common.quiet_tensorflow()
    import warnings

    warnings.filterwarnings("ignore", message=".*shuffle=True.*")
    import keras

    from benchmarks import optimizers as bopt
    from keras_qsgld.experiments.datasets import DatasetUnavailableError, load_dataset
    from keras_qsgld.experiments.models import build_model

    names = bopt.parse_optimizers(args.optimizers, ("sgd", "qsgld"))
    synthetic = args.synthetic or args.quick
    depth = 8 if args.quick else args.depth
    epochs = 1 if args.quick else args.epochs
    store = common.ResultStore(args.output_dir, "cifar", args.force)
    rows, notes = [], []
    for name in names:
        for seed in args.seed_list[: (1 if args.quick else None)]:
            key = store.make_key(d=args.dataset, o=name, seed=seed, e=epochs, depth=depth, lr=args.lr, syn=synthetic)
            rec = store.get(key)
            if rec is None:
                keras.backend.clear_session()
                try:
                    if synthetic:
                        n = 512 if args.quick else 50000
                        bundle = synthetic_bundle(args.dataset, n, n // 5, 128, seed)
                    else:
                        bundle = load_dataset(args.dataset, batch_size=128, data_dir=args.data_dir, shuffle=False,
                                              drop_remainder=True, seed=seed)
                except DatasetUnavailableError as err:
                    common.log(f"cifar: {err}")
                    rows.append([args.dataset, name, seed, "unavailable", "-", "-", "-"])
                    if not notes:
                        notes.append(f"{args.dataset} unavailable here: {err}")
                    continue
                model = build_model("cifar_resnet", bundle.input_shape, bundle.num_classes, seed=seed, depth=depth)
                opt = bopt.build(name, args.lr, steps_per_epoch=bundle.steps_per_epoch, epochs=epochs, seed=seed)
                jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile.lower()]
                model.compile(opt, "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit)

                class Progress(keras.callbacks.Callback):
                    def on_epoch_end(self, epoch, logs=None, name=name, seed=seed):
                        common.log(f"cifar: {name} seed {seed} epoch {epoch + 1}/{epochs}: "
                                   f"loss {logs['loss']:.4f} acc {logs['accuracy']:.4f}")

                t0 = time.perf_counter()
                model.fit(bundle.train, epochs=epochs, verbose=0, callbacks=[Progress()])
                seconds = time.perf_counter() - t0
                test_loss, test_acc = model.evaluate(bundle.test, verbose=0)
                train_loss, _ = model.evaluate(bundle.train, verbose=0)
                rec = store.put(key, {"test_acc": float(test_acc), "train_loss": float(train_loss),
                                      "seconds_per_epoch": seconds / epochs, "data": bundle.name})
            rows.append([rec["data"], name, seed, common.fmt(rec["test_acc"] * 100), common.fmt(rec["train_loss"]),
                         common.fmt(rec["seconds_per_epoch"]), epochs])
    headers = ["data", "optimizer", "seed", "test accuracy %", "final train loss", "s / epoch (incl. compile)", "epochs"]
    notes = [
        f"CIFAR ResNet-{depth}, batch 128, lr {args.lr}, no augmentation, no shuffling, drop_remainder; QSGLD with "
        f"eta 2^19 and tau0 = 0.2 x {epochs} epochs. A short run, not the paper's 200 epochs.",
    ] + (["Synthetic random data of CIFAR's shape: accuracies are meaningless (chance level)."] if synthetic else []) + notes
    return [common.write_table(args, "cifar", "Short run of the paper's CIFAR protocol", headers, rows, notes)]


if __name__ == "__main__":
    main()
