"""`MultiWorkerMirroredStrategy`: two worker processes on 127.0.0.1 configured by `TF_CONFIG`.

Runs the user example `examples/distributed.py` as it is documented in docs/scaling.md:
two workers (free ports, bounded in time, always killed) and, alongside, the same command
without `TF_CONFIG` (one device, the same global batch) as the reference.
"""

import json

import numpy as np
import pytest

from tests.programs import runner

pytestmark = pytest.mark.backends(
    "tensorflow"
)  # tf.distribute: TensorFlow's own machinery

EXAMPLE = "examples/distributed.py"
ARGS = [
    "--dataset",
    "digits",
    "--epochs",
    "2",
    "--batch-size",
    "128",
    "--verbose",
    "0",
]
TIMEOUT = 300
QP = (
    2.0**19
)  # the default ResolutionSchedule: 2**18, then 2**19 after epoch 0.718


def _tf_config(ports, index):
    return json.dumps(
        {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
    )


def _launch(tmp):
    """Starts two workers and the single-device reference; waits for all; kills leftovers."""
    ports = runner.free_ports(2)
    procs = [
        runner.start(
            EXAMPLE,
            *ARGS,
            "--output-dir",
            tmp / "multi",
            env=runner.script_env(TF_CONFIG=_tf_config(ports, i)),
            log=tmp / f"worker{i}.log",
        )
        for i in range(2)
    ]
    procs.append(
        runner.start(
            EXAMPLE,
            *ARGS,
            "--output-dir",
            tmp / "single",
            log=tmp / "single.log",
        )
    )
    logs = [tmp / "worker0.log", tmp / "worker1.log", tmp / "single.log"]
    try:
        for proc, log in zip(procs, logs):
            try:
                proc.wait(timeout=TIMEOUT)
            except Exception:  # noqa: BLE001 - TimeoutExpired: report with the log
                raise AssertionError(
                    f"{log.name}: no result in {TIMEOUT} s\n{runner.tail(log)}"
                ) from None
    finally:
        for proc in procs:
            runner.kill(proc)
    return [(proc.returncode, log) for proc, log in zip(procs, logs)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    pytest.importorskip("sklearn")
    tmp = tmp_path_factory.mktemp("multiworker")
    results = _launch(tmp)
    if any(
        rc != 0 and "already in use" in runner.tail(log, 400)
        for rc, log in results
    ):
        results = _launch(
            tmp
        )  # a port was taken between choosing and binding it
    for rc, log in results:
        assert rc == 0, f"{log.name} exited with {rc}\n{runner.tail(log)}"
    return tmp


def _load_weights(path):
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: (
                arrays.__setitem__(name, obj[()])
                if isinstance(obj, h5py.Dataset)
                else None
            )
        )
    return arrays


def test_two_workers_train_in_sync(runs):
    for i in range(2):
        summary = json.loads((runs / "multi" / f"worker{i}.json").read_text())
        assert summary["worker"] == i
        assert (
            summary["num_replicas_in_sync"] == 2
        )  # one CPU replica per worker
        assert (
            summary["jit_compile"] is False
        )  # Keras disables XLA under tf.distribute
        # One optimizer step per global batch: 1437 digits, batch 128, drop_remainder.
        assert (
            summary["iterations"]
            == 2 * summary["steps_per_epoch"]
            == 2 * (1437 // 128)
        )
    single = json.loads((runs / "single" / "worker0.json").read_text())
    assert single["num_replicas_in_sync"] == 1


def test_both_workers_finish_with_identical_weights(runs):
    w0 = _load_weights(runs / "multi" / "worker0.weights.h5")
    w1 = _load_weights(runs / "multi" / "worker1.weights.h5")
    assert len(w0) >= 5 and sorted(w0) == sorted(
        w1
    )  # 4 weights + optimizer variables
    for key in w0:
        assert w0[key].tobytes() == w1[key].tobytes(), key


def test_workers_match_one_device_with_the_global_batch(runs):
    """Each worker gets half of every global batch and the gradients are all-reduced: the
    result is the single-device one up to float summation order (a few grid cells at most).
    Without the all-reduce each worker would follow its own half of the data."""
    multi = _load_weights(runs / "multi" / "worker0.weights.h5")
    single = _load_weights(runs / "single" / "worker0.weights.h5")
    for key in (k for k in multi if k.startswith("layers/")):
        cells = (
            np.abs(
                multi[key].astype(np.float64) - single[key].astype(np.float64)
            )
            * QP
        )
        assert cells.max() <= 4, (key, cells.max())
        assert np.mean(cells > 0) <= 0.05
    losses = [
        json.loads((runs / d / "worker0.json").read_text())["history"]["loss"]
        for d in ("multi", "single")
    ]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-4)
    assert losses[0][-1] < losses[0][0]  # it trained
