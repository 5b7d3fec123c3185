"""QSGLD and QAdam in every path Keras users take (issue 2, "Must work").

XLA, eager loops, mixed precision, dtypes, the base-class options, sparse gradients,
saving and exact resume, serialization, and Keras' own generic optimizer checks
(`keras/src/optimizers/optimizer_test.py`) re-run for QSGLD and QAdam.
"""

import pickle

import keras
import numpy as np
import pytest
from keras import ops

import keras_qsgld
from tests import reference as ref
from tests.backends import (
    BACKEND,
    FLOAT_DTYPES,
    CompiledApply,
    requires_float64,
)
from tests.programs import runner

if BACKEND == "tensorflow":
    import tensorflow as tf

OPTIMIZERS = [keras_qsgld.QSGLD, keras_qsgld.QAdam]
FINE = (
    2.0**20
)  # a fixed Qp so fine that Keras' plain-SGD expectations hold to 5e-7


def schedules(steps_per_epoch=4, eta=2.0**12, tau0=1.0, gate="logistic"):
    return dict(
        resolution=keras_qsgld.ResolutionSchedule(
            eta=eta, steps_per_epoch=steps_per_epoch
        ),
        compensation=keras_qsgld.CompensationSchedule(
            tau0=tau0, steps_per_epoch=steps_per_epoch, gate=gate
        ),
    )


def make_optimizer(cls, **kwargs):
    base = dict(
        learning_rate=0.05 if cls is keras_qsgld.QSGLD else 0.01,
        jit_compile=False,
        seed=0,
        **schedules(),
    )
    if cls is keras_qsgld.QSGLD:
        base["momentum"] = 0.9
    base.update(kwargs)
    return cls(**base)


def data(n=64, features=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype("float32")
    y = (x[:, :1] - 0.5 * x[:, 1:2] > 0).astype("float32")
    return x, y


def make_model(seed=0, features=8):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((features,)),
            keras.layers.Dense(6, activation="relu"),
            keras.layers.Dense(1),
        ]
    )


def weights_of(model):
    return [np.array(w) for w in model.get_weights()]


def optimizer_state(optimizer):
    return [np.array(v.numpy()) for v in optimizer.variables]


def assert_same_arrays(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


class CountingQSGLD(keras_qsgld.QSGLD):
    """Counts Python calls of `update_step`: inside a tf.function, one per variable per trace."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.__dict__["python_calls"] = 0

    def update_step(self, gradient, variable, learning_rate):
        self.__dict__["python_calls"] += 1
        return super().update_step(gradient, variable, learning_rate)


# -- XLA and the eager path ------------------------------------------------------------------
@pytest.mark.parametrize(
    "jit_compile",
    [
        pytest.param(True, marks=pytest.mark.backends("tensorflow", "jax")),
        False,
    ],
)
def test_fit_traces_the_update_once(jit_compile):
    """XLA (TensorFlow, JAX): one trace of the update for 12 steps; TensorFlow's graph
    without XLA too. Eager JAX and PyTorch call it every step."""
    x, y = data()
    model = make_model()
    opt = CountingQSGLD(0.05, momentum=0.9, **schedules())
    model.compile(opt, "mse", jit_compile=jit_compile)
    # Built beforehand: a tf.function that creates variables on its first call traces twice.
    opt.build(model.trainable_variables)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0, shuffle=False)
    assert model.jit_compile is jit_compile
    assert (
        int(opt.iterations) == 12
    )  # Qp changes at step 3, the gate every step
    traces = 1 if jit_compile or BACKEND == "tensorflow" else 12
    assert opt.python_calls == traces * len(model.trainable_variables)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_update_in_a_compiled_function_traces_once(cls):
    """The anchors' pattern: schedules change every step, the function is traced once
    (torch.compile: a few graphs on the first calls, none after)."""
    v = keras.Variable(np.zeros((5, 3), np.float32))
    opt = make_optimizer(
        cls, **schedules(steps_per_epoch=1, eta=64.0, tau0=2.0)
    )
    apply = CompiledApply(opt, [v])
    rng = np.random.default_rng(0)
    for k in range(8):
        apply([rng.normal(size=(5, 3)).astype(np.float32)])
        if k == 2:
            traces = apply.traces()
    assert apply.traces() == traces and (BACKEND == "torch" or traces == 1)
    assert (
        int(opt.iterations) == 8
        and float(opt.resolution_at(opt.iterations)) == 128.0
    )


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_eager_apply_runs_the_xla_compiled_update(cls):
    model = make_model()
    variables = model.trainable_variables
    rng = np.random.default_rng(1)
    grads = [
        [rng.normal(size=v.shape).astype(np.float32) for v in variables]
        for _ in range(6)
    ]
    results = {}
    for jit in (True, False):
        values = [keras.Variable(v.numpy()) for v in variables]
        opt = make_optimizer(cls, jit_compile=jit)
        for step in grads:
            opt.apply([ops.convert_to_tensor(g) for g in step], values)
        results[jit] = ([v.numpy() for v in values], optimizer_state(opt))
        if jit:
            assert opt._xla_update_step is not None
            assert opt._xla_update_step.experimental_get_tracing_count() == 1
        else:
            assert opt._xla_update_step is None
    assert_same_arrays(results[True][0], results[False][0])
    # XLA contracts `momentum * m - lr * g` (and Adam's moments) into fused multiply-adds, so
    # the slots may differ in their last bits; the rounded increments did not.
    for a, b in zip(results[True][1], results[False][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("outer_xla", [False, True])
def test_xla_update_inside_tf_function_only_where_xla_is_off(outer_xla):
    """In a tf.function without XLA the update runs as its own XLA function (op by op it
    costs several times SGD); inside an XLA function the enclosing compilation covers it."""
    v = keras.Variable(np.zeros(4, np.float32))
    opt = keras_qsgld.QSGLD(0.1, resolution=1024.0, compensation=0.5)
    f = tf.function(lambda g: opt.apply([g], [v]), jit_compile=outer_xla)
    f(tf.ones(4))
    f(tf.ones(4))
    assert (opt._xla_update_step is None) == outer_xla
    if not outer_xla:
        assert opt._xla_update_step.experimental_get_tracing_count() == 1
    expected = 2 * ref.increment(-0.1 * np.ones(4), 1024.0, 0.1, 0.5)
    np.testing.assert_array_equal(v.numpy(), expected)


# -- mixed precision and dtypes --------------------------------------------------------------
@pytest.fixture
def mixed_float16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize(
    "cls,jit_compile",
    [
        (keras_qsgld.QSGLD, False),
        pytest.param(
            keras_qsgld.QSGLD,
            True,
            marks=pytest.mark.backends("tensorflow", "jax"),
        ),
        (keras_qsgld.QAdam, False),
    ],
)
def test_mixed_float16_with_loss_scale_optimizer(
    cls, jit_compile, mixed_float16
):
    x, y = data()
    model = make_model()
    model.compile(make_optimizer(cls), "mse", jit_compile=jit_compile)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(model.optimizer.inner_optimizer, cls)
    before = weights_of(model)
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert np.all(np.isfinite(history.history["loss"]))
    # LossScaleOptimizer skips steps whose scaled float16 gradients overflow, halving the scale.
    skipped = np.log2(2.0**15 / float(model.optimizer.dynamic_scale))
    assert (
        int(model.optimizer.inner_optimizer.iterations) + skipped == 8
        and skipped <= 3
    )
    assert not np.array_equal(before[0], weights_of(model)[0])


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_float16_variables_quantize_in_float32(cls):
    """At the default Qp(0) = 2**18, Qp * lr * g reaches 2e4: float16 maths would be useless."""
    rng = np.random.default_rng(2)
    g = rng.normal(0, 1, (40,)).astype(np.float16)
    v = keras.Variable(np.zeros(40), dtype="float16")
    lr = 0.08
    opt = cls(
        learning_rate=lr,
        resolution=keras_qsgld.ResolutionSchedule(steps_per_epoch=1),
        jit_compile=False,
    )
    opt.apply([ops.convert_to_tensor(g)], [v])
    assert v.dtype == "float16"
    got = v.numpy().astype(np.float64)
    g64 = [g.astype(np.float64)[None]]
    traj = (
        ref.qsgld_trajectory
        if cls is keras_qsgld.QSGLD
        else ref.qadam_trajectory
    )([np.zeros(40)], g64, lr, lambda k: ref.resolution(k))
    assert np.max(np.abs(traj["y"][0][0])) > 1e4
    expected = traj["weights"][0][0].astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=0)
    assert np.all(np.isfinite(got))


@requires_float64
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_float64_variables_keep_float64_maths(cls):
    """|y| ~ 1e6 cells: float32 maths would flip about 10% of the roundings."""
    rng = np.random.default_rng(3)
    w0 = rng.integers(-1000, 1000, (200,)) / 64.0
    grads = rng.normal(0, 1, (3, 200))
    lr = (
        0.5 if cls is keras_qsgld.QSGLD else 0.25
    )  # exact in the float32 learning-rate variable
    v = keras.Variable(w0, dtype="float64")
    if cls is keras_qsgld.QSGLD:
        opt = cls(
            learning_rate=lr,
            resolution=2.0**21,
            compensation=0.5,
            momentum=0.9,
            jit_compile=False,
        )
        traj = ref.qsgld_trajectory(
            [w0], [grads], lr, 2.0**21, 0.5, momentum=0.9
        )
    else:
        opt = cls(
            learning_rate=lr,
            resolution=2.0**21,
            compensation=0.5,
            jit_compile=False,
        )
        traj = ref.qadam_trajectory([w0], [grads], lr, 2.0**21, 0.5)
    previous = w0
    for k in range(3):
        opt.apply([ops.convert_to_tensor(grads[k], "float64")], [v])
        assert v.dtype == "float64"
        assert np.max(np.abs(traj["y"][k][0])) > 1e5
        ref.assert_increment_matches(
            v.numpy() - previous,
            traj["y"][k][0],
            2.0**21,
            rel_margin=1e-9,
            max_ambiguous=0,
        )
        previous = v.numpy()


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_bfloat16_variables(cls):
    import ml_dtypes

    rng = np.random.default_rng(4)
    w0 = rng.normal(0, 1, (50,)).astype(ml_dtypes.bfloat16)
    g = rng.normal(0, 1, (50,)).astype(np.float32)
    v = keras.Variable(w0, dtype="bfloat16")
    lr = 0.05 if cls is keras_qsgld.QSGLD else 0.01
    opt = cls(
        learning_rate=lr, resolution=1024.0, compensation=0.5, jit_compile=False
    )
    opt.apply([ops.convert_to_tensor(g, "bfloat16")], [v])
    assert v.dtype == "bfloat16"
    traj = (
        ref.qsgld_trajectory
        if cls is keras_qsgld.QSGLD
        else ref.qadam_trajectory
    )(
        [np.zeros(50)],
        [g.astype(ml_dtypes.bfloat16).astype(np.float64)[None]],
        lr,
        1024.0,
        0.5,
    )
    expected = (w0.astype(np.float64) + traj["weights"][0][0]).astype(
        ml_dtypes.bfloat16
    )
    got = v.numpy()
    # bfloat16 keeps 8 bits: equal up to one bfloat16 ulp of the result.
    np.testing.assert_allclose(
        got.astype(np.float64), expected.astype(np.float64), rtol=2**-7, atol=0
    )
    assert not np.array_equal(got, w0)


# -- base-class options ----------------------------------------------------------------------
def _one_step(opt, w, g):
    v = keras.Variable(w)
    opt.apply([ops.convert_to_tensor(g)], [v])
    return v.numpy()


@pytest.mark.parametrize(
    "kwargs,clip",
    [
        (dict(clipnorm=1.0), lambda g: g / max(1.0, np.linalg.norm(g))),
        (dict(clipvalue=0.3), lambda g: np.clip(g, -0.3, 0.3)),
        (dict(global_clipnorm=1.0), lambda g: g / max(1.0, np.linalg.norm(g))),
    ],
    ids=["clipnorm", "clipvalue", "global_clipnorm"],
)
def test_gradient_clipping(kwargs, clip):
    rng = np.random.default_rng(5)
    w = (rng.integers(-100, 100, (20, 5)) / 1024).astype(np.float32)
    g = rng.normal(0, 2, (20, 5)).astype(np.float32)
    opt = keras_qsgld.QSGLD(
        0.1, resolution=1024.0, compensation=0.3, jit_compile=False, **kwargs
    )
    got = _one_step(opt, w, g)
    y = ref.scaled_step(-0.1 * clip(g.astype(np.float64)), 1024.0, 0.1, 0.3)
    ref.assert_increment_matches(got.astype(np.float64) - w, y, 1024.0)
    unclipped = ref.scaled_step(-0.1 * g.astype(np.float64), 1024.0, 0.1, 0.3)
    assert not np.array_equal(ref.quantize(y), ref.quantize(unclipped))


def test_weight_decay():
    rng = np.random.default_rng(6)
    w = rng.normal(0, 1, (10, 4)).astype(np.float32)
    g = rng.normal(0, 1, (10, 4)).astype(np.float32)
    opt = keras_qsgld.QSGLD(
        0.05,
        weight_decay=0.2,
        resolution=1024.0,
        compensation=0.5,
        jit_compile=False,
    )
    got = _one_step(opt, w, g)
    decayed = w - w * np.float32(0.2) * np.float32(0.05)
    delta = ref.increment(
        -0.05 * g.astype(np.float64), 1024.0, 0.05, 0.5
    ).astype(np.float32)
    np.testing.assert_allclose(got, decayed + delta, rtol=0, atol=1e-6)
    assert np.max(np.abs(got - (w + delta))) > 1e-3


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_ema_matches_keras_expectations(cls):
    """Keras' `test_ema` (SGD, lr 1, gradients 1) holds for a fine, fixed grid."""
    v = keras.Variable([[3.0, 4.0], [5.0, 6.0]])
    grads = ops.convert_to_tensor([[1.0, 1.0], [1.0, 1.0]])
    kwargs = dict(
        learning_rate=1.0,
        resolution=FINE,
        use_ema=True,
        ema_momentum=0.9,
        ema_overwrite_frequency=3,
    )
    atol = 1e-6
    if cls is keras_qsgld.QAdam:
        kwargs["epsilon"] = (
            0.0  # Adam's step is then lr * sign(g) = 1 up to float32 rounding
        )
        atol = 1e-5
    opt = cls(**kwargs)
    opt.apply_gradients([(grads, v)])
    np.testing.assert_allclose(v, [[2.0, 3.0], [4.0, 5.0]], atol=atol)
    np.testing.assert_allclose(
        opt._model_variables_moving_average[0],
        [[2.0, 3.0], [4.0, 5.0]],
        atol=atol,
    )
    opt.apply_gradients([(grads, v)])
    np.testing.assert_allclose(v, [[1.0, 2.0], [3.0, 4.0]], atol=atol)
    np.testing.assert_allclose(
        opt._model_variables_moving_average[0],
        [[1.9, 2.9], [3.9, 4.9]],
        atol=atol,
    )
    opt.apply_gradients([(grads, v)])
    np.testing.assert_allclose(
        v, [[1.71, 2.71], [3.71, 4.71]], atol=atol
    )  # overwritten with the EMA


def test_ema_with_model_fit():
    model = keras.Sequential(
        [
            keras.Input((1,)),
            keras.layers.Dense(2, kernel_initializer="ones", use_bias=False),
        ]
    )
    opt = keras_qsgld.QSGLD(
        0.1, resolution=FINE, use_ema=True, ema_momentum=0.9
    )
    model.compile(opt, "mse", run_eagerly=True)
    model.fit(
        np.ones((1, 1), "float32"),
        np.zeros((1, 1), "float32"),
        batch_size=1,
        epochs=2,
        verbose=0,
    )
    np.testing.assert_allclose(
        opt._model_variables_moving_average[0].numpy(),
        [[0.891, 0.891]],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        model.trainable_variables[0].numpy(), [[0.891, 0.891]], atol=1e-5
    )


def test_gradient_accumulation_schedules_follow_iterations():
    """With 2 accumulation steps the first real update is at iterations = 0 (raw counter 1):
    it must use Qp(0) = 4, the coarse grid, not Qp(1)."""
    resolution = lambda step: ops.where(ops.equal(step, 0), 4.0, 1024.0)  # noqa: E731
    v = keras.Variable(np.zeros(30, np.float32))
    opt = keras_qsgld.QSGLD(
        0.1,
        resolution=resolution,
        gradient_accumulation_steps=2,
        jit_compile=False,
    )
    g = np.random.default_rng(7).normal(0, 1, (4, 30)).astype(np.float32)
    opt.apply([ops.convert_to_tensor(g[0])], [v])
    np.testing.assert_array_equal(v.numpy(), np.zeros(30))
    assert int(opt.iterations) == 0
    opt.apply([ops.convert_to_tensor(g[1])], [v])
    assert int(opt.iterations) == 1
    mean = (g[0].astype(np.float64) + g[1]) / 2
    np.testing.assert_array_equal(v.numpy(), ref.increment(-0.1 * mean, 4.0))
    before = v.numpy().astype(np.float64)
    opt.apply([ops.convert_to_tensor(g[2])], [v])
    opt.apply([ops.convert_to_tensor(g[3])], [v])
    mean = (g[2].astype(np.float64) + g[3]) / 2
    ref.assert_increment_matches(
        v.numpy() - before, ref.scaled_step(-0.1 * mean, 1024.0), 1024.0
    )


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_gradient_accumulation_with_weight_decay(cls):
    """Keras' check: accumulating 3 batches equals one step on their mean, schedules included."""
    sched = schedules(steps_per_epoch=1, eta=2.0**10, tau0=3.0)
    one = cls(weight_decay=0.05, jit_compile=False, **sched)
    three = cls(
        weight_decay=0.05,
        gradient_accumulation_steps=3,
        jit_compile=False,
        **sched,
    )
    v1 = keras.Variable(np.linspace(-1, 1, 12).reshape(6, 2).astype(np.float32))
    v3 = keras.Variable(v1.numpy())
    rng = np.random.default_rng(8)
    for _ in range(8):
        grads3 = rng.random((3, 6, 2)).astype("float32")
        one.apply_gradients([(ops.convert_to_tensor(grads3.mean(axis=0)), v1)])
        for batch in range(3):
            three.apply_gradients([(ops.convert_to_tensor(grads3[batch]), v3)])
    assert int(one.iterations) == int(three.iterations) == 8
    np.testing.assert_allclose(v1.numpy(), v3.numpy(), rtol=0, atol=1e-6)
    assert not np.allclose(
        v1.numpy(), np.linspace(-1, 1, 12).reshape(6, 2), atol=1e-3
    )


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("compensation", [None, 0.5])
def test_sparse_indexed_slices_gradient(compensation):
    """An IndexedSlices gradient (duplicates summed) equals its dense counterpart."""
    rng = np.random.default_rng(9)
    w = (rng.integers(-512, 512, (10, 4)) / 1024).astype(np.float32)
    values = rng.normal(0, 1, (3, 4)).astype(np.float32)
    sparse = tf.IndexedSlices(
        tf.constant(values), tf.constant([1, 3, 3]), tf.constant([10, 4])
    )
    dense = np.zeros((10, 4))
    np.add.at(dense, [1, 3, 3], values.astype(np.float64))
    for jit in (False, True):
        opt = keras_qsgld.QSGLD(
            0.1, resolution=1024.0, compensation=compensation, jit_compile=jit
        )
        v = keras.Variable(w)
        opt.apply([sparse], [v])
        got = v.numpy().astype(np.float64) - w
        ref.assert_increment_matches(
            got,
            ref.scaled_step(-0.1 * dense, 1024.0, 0.1, compensation),
            1024.0,
        )
        np.testing.assert_array_equal(
            got[[0, 2, 4, 5, 6, 7, 8, 9]], 0.0
        )  # untouched rows stay


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_embedding_model_fit_with_sparse_gradients(cls):
    rng = np.random.default_rng(10)
    x = rng.integers(
        0, 5, (32, 3)
    )  # only rows 0..4 of the 12-row table are used
    y = rng.normal(size=(32, 1)).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((3,), dtype="int32"),
            keras.layers.Embedding(12, 4),
            keras.layers.Flatten(),
            keras.layers.Dense(1),
        ]
    )
    table = model.layers[0].embeddings.numpy()
    model.compile(make_optimizer(cls, clipnorm=1.0), "mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = model.layers[0].embeddings.numpy()
    assert not np.array_equal(after[:5], table[:5])
    np.testing.assert_array_equal(after[5:], table[5:])


# -- saving, resuming, serialization ---------------------------------------------------------
def _compiled(cls, seed=0):
    model = make_model(seed)
    model.compile(make_optimizer(cls), "mse")
    return model


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_keras_file_round_trip_and_bitwise_resume(cls, tmp_path):
    x, y = data()
    straight = _compiled(cls)
    straight.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)

    first = _compiled(cls)
    first.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    path = tmp_path / "m.keras"
    first.save(path)
    loaded = keras.saving.load_model(path)
    opt, original = loaded.optimizer, first.optimizer
    assert type(opt) is cls and opt is not original
    assert isinstance(opt.resolution, keras_qsgld.ResolutionSchedule)
    assert isinstance(opt.compensation, keras_qsgld.CompensationSchedule)
    assert opt.resolution.get_config() == original.resolution.get_config()
    assert opt.compensation.get_config() == original.compensation.get_config()
    assert opt.get_config() == original.get_config()
    assert int(opt.iterations) == 4
    assert_same_arrays(
        optimizer_state(opt), optimizer_state(original)
    )  # iterations, lr, slots

    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    assert_same_arrays(weights_of(loaded), weights_of(straight))  # exact resume
    assert_same_arrays(
        optimizer_state(loaded.optimizer), optimizer_state(straight.optimizer)
    )


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_save_weights_load_weights_after_build(cls, tmp_path):
    x, y = data()
    model = _compiled(cls)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "w.weights.h5"
    model.save_weights(path)
    other = _compiled(cls, seed=1)
    other.optimizer.build(other.trainable_variables)
    other.load_weights(path)
    assert_same_arrays(weights_of(other), weights_of(model))
    assert int(other.optimizer.iterations) == 4
    assert_same_arrays(
        optimizer_state(other.optimizer), optimizer_state(model.optimizer)
    )


@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("compensation", ["schedule", 0.25, None])
def test_config_serialize_deserialize_and_pickle(cls, compensation):
    kwargs = dict(
        learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9),
        resolution=keras_qsgld.ResolutionSchedule(
            eta=300.0, base=3.0, steps_per_epoch=7
        ),
        compensation=compensation
        if compensation != "schedule"
        else keras_qsgld.CompensationSchedule(
            kappa=1.0, tau0=4.0, steps_per_epoch=7, gate="tanh"
        ),
        rounding="floor",
        jit_compile=False,
        clipnorm=2.0,
        name="my_opt",
    )
    if cls is keras_qsgld.QSGLD:
        kwargs.update(momentum=0.5, nesterov=True)
    else:
        kwargs.update(beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    opt = cls(**kwargs)
    config = opt.get_config()
    snapshot = pickle.dumps(config)
    clone = cls.from_config(config)
    assert (
        pickle.dumps(config) == snapshot
    )  # from_config did not mutate the dict
    assert clone.get_config() == config
    for key in ("resolution", "compensation"):
        original = getattr(opt, key)
        if original is None:
            assert getattr(clone, key) is None
        else:
            assert type(getattr(clone, key)) is type(original)
            assert getattr(clone, key).get_config() == original.get_config()
    serialized = keras.optimizers.serialize(opt)
    assert serialized["registered_name"] == f"keras_qsgld>{cls.__name__}"
    revived = keras.optimizers.deserialize(serialized)
    assert type(revived) is cls and revived.get_config() == config
    assert keras.optimizers.get(serialized).get_config() == config
    unpickled = pickle.loads(pickle.dumps(opt))
    assert type(unpickled) is cls and unpickled.get_config() == config


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_tf_train_checkpoint(cls, tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    optimizer = make_optimizer(cls)
    x, y = np.random.default_rng(0).random((2, 1, 2))
    model.compile(optimizer, "mse")
    model.train_on_batch(x, y)
    ref_pred = model.predict(x, verbose=0)
    state = optimizer_state(optimizer)
    checkpoint = tf.train.Checkpoint(model, optimizer=optimizer)
    save_path = checkpoint.save(str(tmp_path / "tf_ckpt"))
    model.train_on_batch(x, y)
    assert not np.allclose(model.predict(x, verbose=0), ref_pred, atol=1e-3)
    checkpoint.restore(save_path)
    np.testing.assert_allclose(model.predict(x, verbose=0), ref_pred, atol=1e-6)
    assert_same_arrays(optimizer_state(optimizer), state)


# -- Keras' generic optimizer checks (keras/src/optimizers/optimizer_test.py) ---------------
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_iterations_counter(cls):
    v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = ops.convert_to_tensor([[1.0, 1.0], [1.0, 1.0]])
    opt = cls(learning_rate=1.0, resolution=FINE)
    assert int(opt.iterations) == 0
    opt.apply_gradients([(grads, v)])
    assert int(opt.iterations) == 1
    opt.apply_gradients([(grads, v)])
    assert int(opt.iterations) == 2


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_empty_gradients(cls):
    v = keras.Variable([[3.0, 4.0], [5.0, 6.0]])
    with pytest.raises(
        ValueError, match="No gradients provided for any variable."
    ):
        cls(learning_rate=1.0).apply_gradients([(None, v)])
    v2 = keras.Variable([[3.0, 4.0], [5.0, 6.0]])
    grads2 = ops.convert_to_tensor([[1.0, 1.0], [1.0, 1.0]])
    opt = cls(
        learning_rate=1.0,
        resolution=FINE,
        **({"epsilon": 0.0} if cls is keras_qsgld.QAdam else {}),
    )
    with pytest.warns(UserWarning):
        opt.apply_gradients([(None, v), (grads2, v2)])
    np.testing.assert_array_equal(v.numpy(), [[3.0, 4.0], [5.0, 6.0]])
    np.testing.assert_allclose(v2.numpy(), [[2.0, 3.0], [4.0, 5.0]], atol=1e-6)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_clip_args(cls):
    assert cls(clipnorm=0.1).clipnorm == 0.1
    assert cls(clipvalue=0.1).clipvalue == 0.1
    assert cls(global_clipnorm=0.1).global_clipnorm == 0.1
    for bad in (
        dict(clipnorm=0.1, clipvalue=0.1),
        dict(clipnorm=0.1, global_clipnorm=0.1),
    ):
        with pytest.raises(
            ValueError,
            match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can",
        ):
            cls(**bad)


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_constraints_are_applied(cls):
    v = keras.Variable(np.random.default_rng(0).random((2, 2)) - 1.0)
    v.constraint = keras.constraints.NonNeg()
    cls(learning_rate=0.0001, resolution=FINE).apply_gradients(
        [(ops.zeros((2, 2)), v)]
    )
    assert np.min(v.numpy()) == 0.0


def test_static_loss_scaling():
    v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = ops.convert_to_tensor([[1.0, 2.0], [3.0, 4.0]]) * 1024.0
    opt = keras_qsgld.QSGLD(
        learning_rate=1.0, resolution=FINE, loss_scale_factor=1024.0
    )
    opt.apply_gradients([(grads, v)])
    assert opt.scale_loss(1.0) == 1024.0
    np.testing.assert_array_equal(v.numpy(), np.zeros((2, 2)))


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_set_weights(cls):
    x = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    opt1 = make_optimizer(cls)
    opt1.apply_gradients(
        zip([ops.convert_to_tensor([[1.0, 2.0], [3.0, 4.0]])], [x])
    )
    opt2 = make_optimizer(cls)
    with pytest.raises(ValueError, match="You are calling*"):
        opt2.set_weights(opt1.variables)
    opt2.build([x])
    opt2.set_weights(opt1.variables)
    assert_same_arrays(optimizer_state(opt2), optimizer_state(opt1))


def test_gradient_accumulation_keras_values():
    v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = ops.convert_to_tensor([[1.0, 1.0], [1.0, 1.0]])
    opt = keras_qsgld.QSGLD(
        learning_rate=1.0, resolution=FINE, gradient_accumulation_steps=3
    )
    assert opt.gradient_accumulation_steps == 3
    expected_v = [[[1.0, 2.0], [3.0, 4.0]]] * 2 + [[[0.0, 1.0], [2.0, 3.0]]] * 2
    expected_acc = [1.0, 2.0, 0.0, 1.0]
    for i in range(4):
        opt.apply_gradients([(grads, v)])
        np.testing.assert_array_equal(v.numpy(), expected_v[i])
        np.testing.assert_array_equal(
            opt._accumulated_gradients[0].numpy(),
            np.full((2, 2), expected_acc[i]),
        )
        assert (
            int(opt._iterations) == i + 1
            and int(opt.iterations) == (i + 1) // 3
        )


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_callable_learning_rate(cls):
    v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = ops.convert_to_tensor([[1.0, 1.0], [1.0, 1.0]])
    extra = {"epsilon": 0.0} if cls is keras_qsgld.QAdam else {}
    opt = cls(
        learning_rate=lambda: 0.1, resolution=FINE, compensation=0.5, **extra
    )
    opt.apply_gradients([(grads, v)])
    # h = -0.1 per entry (Adam: -0.1 sign(g) too) and ||h|| = 0.2: r = 0.5 * step * h / 0.2, with
    # step = lr = 0.1 for QSGLD and Adam's a_1 = lr * sqrt(1 - 0.999) / (1 - 0.9) for QAdam.
    step = 0.1 if cls is keras_qsgld.QSGLD else 0.1 * np.sqrt(0.001) / 0.1
    expected = np.array([[1.0, 2.0], [3.0, 4.0]]) - 0.1 - 0.5 * step * 0.5
    np.testing.assert_allclose(v.numpy(), expected, atol=1e-6)
    assert int(opt.iterations) == 1


def test_overwrite_with_gradient():
    v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    v.overwrite_with_gradient = True
    v2 = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = ops.convert_to_tensor([[1.0, 1.0], [1.0, 1.0]])
    keras_qsgld.QSGLD(learning_rate=1.0, resolution=FINE).apply_gradients(
        [(grads, v), (grads, v2)]
    )
    np.testing.assert_array_equal(v.numpy(), [[1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(v2.numpy(), [[0.0, 1.0], [2.0, 3.0]])


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_setting_lr_to_callable_untracks_lr_var(cls):
    opt = cls(learning_rate=0.001)
    count = len(opt.variables)
    opt.learning_rate = keras.optimizers.schedules.PolynomialDecay(
        opt.learning_rate, 4
    )
    assert len(opt.variables) == count - 1


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_mixed_with_tf_variables(cls):
    v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    tf_v = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = ops.convert_to_tensor([[1.0, 1.0], [1.0, 1.0]])
    opt = cls(learning_rate=1.0, resolution=4.0)
    opt.apply_gradients([(grads, v), (grads, tf_v)])
    assert int(opt.iterations) == 1
    np.testing.assert_array_equal(tf_v.numpy(), v.numpy())
    with pytest.warns(
        UserWarning, match="Gradients do not exist for variables"
    ):
        opt.apply_gradients([(grads, v), (None, tf_v)])
    assert int(opt.iterations) == 2


def test_optimizer_auto_naming():
    keras.backend.clear_session()  # resets the name counters, as Keras' test harness does
    names = [
        keras_qsgld.QSGLD().name,
        keras_qsgld.QSGLD().name,
        keras_qsgld.QAdam().name,
        keras_qsgld.QAdam().name,
    ]
    assert names == ["qsgld", "qsgld_1", "qadam", "qadam_1"]
    assert keras_qsgld.QSGLD(name="mine").name == "mine"
    second = keras_qsgld.QSGLD()
    assert second.name == "qsgld_2"
    assert (
        keras.optimizers.deserialize(keras.optimizers.serialize(second)).name
        == "qsgld_2"
    )


# -- non-finite gradients --------------------------------------------------------------------
BAD = np.array([[1.0, np.nan], [np.inf, -0.5]], np.float32)


@pytest.mark.parametrize(
    "ours,theirs",
    [
        (
            lambda: keras_qsgld.QSGLD(0.1, resolution=FINE),
            lambda: keras.optimizers.SGD(0.1),
        ),
        (
            lambda: keras_qsgld.QSGLD(0.1, resolution=FINE, momentum=0.9),
            lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        ),
        (
            lambda: keras_qsgld.QAdam(0.1, resolution=FINE),
            lambda: keras.optimizers.Adam(0.1),
        ),
    ],
    ids=["sgd", "momentum", "adam"],
)
def test_non_finite_gradients_behave_as_keras(ours, theirs):
    """Without compensation: non-finite exactly where Keras' SGD / Adam are."""
    results = []
    for make in (ours, theirs):
        v = keras.Variable(np.ones((2, 2), np.float32))
        opt = make()
        opt.apply([ops.convert_to_tensor(BAD)], [v])
        assert int(opt.iterations) == 1  # the step counts, as in Keras
        results.append(v.numpy())
    np.testing.assert_array_equal(np.isnan(results[0]), np.isnan(results[1]))
    np.testing.assert_array_equal(
        np.isposinf(results[0]), np.isposinf(results[1])
    )
    np.testing.assert_array_equal(
        np.isneginf(results[0]), np.isneginf(results[1])
    )
    finite = np.isfinite(results[1])
    np.testing.assert_allclose(
        results[0][finite], results[1][finite], atol=1e-6
    )


def test_non_finite_gradient_with_compensation():
    """A non-finite norm switches the compensation off for that tensor (r = 0 where the norm
    is NaN, 0 * h where it is inf): non-finite weights exactly where Keras' SGD has them."""
    results = []
    for opt in (
        keras_qsgld.QSGLD(0.1, resolution=FINE, compensation=1.0),
        keras.optimizers.SGD(0.1),
    ):
        v, other = (
            keras.Variable(np.ones((2, 2), np.float32)),
            keras.Variable(np.ones(3, np.float32)),
        )
        opt.apply([ops.convert_to_tensor(BAD), ops.ones(3)], [v, other])
        results.append((v.numpy(), other.numpy()))
    np.testing.assert_array_equal(
        np.isfinite(results[0][0]), np.isfinite(results[1][0])
    )
    finite = np.isfinite(results[1][0])
    np.testing.assert_allclose(
        results[0][0][finite], results[1][0][finite], atol=1e-6
    )
    assert np.all(
        np.isfinite(results[0][1])
    )  # other variables are untouched by the NaN


@pytest.mark.parametrize(
    "cls,jit_compile",
    [
        (keras_qsgld.QSGLD, True),
        (keras_qsgld.QSGLD, False),
        (keras_qsgld.QAdam, False),
    ],
)
def test_loss_scale_optimizer_skips_non_finite_steps(cls, jit_compile):
    v = keras.Variable(np.ones((2, 2), np.float32))
    inner = make_optimizer(cls, compensation=0.5, jit_compile=jit_compile)
    lso = keras.optimizers.LossScaleOptimizer(inner, initial_scale=2.0**10)
    # On JAX, Keras runs LossScaleOptimizer statelessly only (its eager `apply` leaks
    # tracers there, for Keras' SGD too): compile it as the JAX trainer does.
    apply = (
        CompiledApply(lso, [v])
        if BACKEND == "jax"
        else (lambda grads: lso.apply(grads, [v]))
    )
    apply([ops.convert_to_tensor(BAD)])
    np.testing.assert_array_equal(v.numpy(), np.ones((2, 2)))  # skipped
    assert int(lso.inner_optimizer.iterations) == 0
    assert float(lso.dynamic_scale) == 2.0**9  # and the scale halved
    apply(
        [ops.convert_to_tensor(np.full((2, 2), 2.0**9, np.float32))]
    )  # a finite, scaled gradient
    assert int(lso.inner_optimizer.iterations) == 1
    assert np.all(np.isfinite(v.numpy())) and not np.array_equal(
        v.numpy(), np.ones((2, 2))
    )
    if BACKEND == "tensorflow":  # eager: the XLA update ran
        assert (inner._xla_update_step is not None) == jit_compile


@pytest.mark.backends("tensorflow")
def test_eager_xla_benchmark_script_runs(capsys):
    """`benchmarks/eager_xla.py` (quoted in docs/eager_xla.md) in its smallest setting."""
    from benchmarks import eager_xla

    eager_xla.main(
        [
            "--models",
            "cnn",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--no-baselines",
        ]
    )
    out = capsys.readouterr().out
    assert out.count("XLA update function traced 1 time(s) in 2 calls") == 2
    assert (
        "| QSGLD(momentum=0.9) jit_compile=False |" in out
        and "QAdam: jit_compile=False / jit_compile=True" in out
    )


# -- eager loops compile once (TensorFlow's eager XLA update) ----------------------------------
@pytest.mark.backends("tensorflow")
def test_callable_learning_rate_returning_python_floats_compiles_once():
    """A callable learning rate that returns Python floats enters the XLA update as a tensor:
    one trace for any sequence of learning rates (it retraced on every new value)."""
    v = keras.Variable(np.zeros((6, 3), np.float32))
    step = {"k": 0}
    opt = keras_qsgld.QSGLD(
        learning_rate=lambda: 0.1 / (1 + step["k"]),
        resolution=1024.0,
        compensation=0.5,
    )
    g = ops.convert_to_tensor(np.ones((6, 3), np.float32))
    for k in range(30):
        step["k"] = k
        opt.apply([g], [v])
    assert opt._xla_update_step.experimental_get_tracing_count() == 1
    # and the values were used: the sum of 30 decreasing steps along -g
    expected = -sum(0.1 / (1 + k) * (1 + 0.5 / np.sqrt(18)) for k in range(30))
    np.testing.assert_allclose(
        v.numpy(), np.full((6, 3), expected), atol=30 / 1024
    )


@pytest.mark.backends("tensorflow")
def test_several_optimizers_in_eager_loops_do_not_warn_about_retracing(caplog):
    """A small learning-rate sweep: seven optimizers one after another compile their own
    update once each, and TensorFlow's "excessive retracing" warning stays silent."""
    import logging

    g = ops.convert_to_tensor(np.ones((4, 2), np.float32))
    with caplog.at_level(logging.WARNING):
        for lr in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
            v = keras.Variable(np.zeros((4, 2), np.float32))
            opt = keras_qsgld.QSGLD(lr, resolution=1024.0)
            for _ in range(3):
                opt.apply([g], [v])
            assert opt._xla_update_step.experimental_get_tracing_count() == 1
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


# -- resuming with other diagnostics or rounding keeps the state -------------------------------
@pytest.mark.parametrize(
    "saved,resumed",
    [
        (dict(track_noise=False), dict(track_noise=True)),
        (dict(track_noise=True), dict(track_noise=False)),
        (dict(rounding="nearest"), dict(rounding="dithered", seed=3)),
        (
            dict(rounding="dithered", seed=3, track_noise=True),
            dict(rounding="floor"),
        ),
    ],
    ids=["noise-on", "noise-off", "to-dithered", "to-floor"],
)
def test_resume_with_other_track_noise_or_rounding_keeps_the_state(
    saved, resumed, tmp_path
):
    """The noise statistics are not saved and every rounding has the same state layout, so
    the iterations (hence Qp and the gate), the learning rate and the slots come back."""
    x, y = data()
    sched = schedules(steps_per_epoch=4)
    model = make_model()
    model.compile(
        keras_qsgld.QSGLD(0.05, momentum=0.9, **sched, **saved), "mse"
    )
    model.fit(x, y, batch_size=16, epochs=8, verbose=0, shuffle=False)
    path = tmp_path / "run.weights.h5"
    model.save_weights(path)
    other = make_model(seed=1)
    other.compile(
        keras_qsgld.QSGLD(
            0.05, momentum=0.9, **schedules(steps_per_epoch=4), **resumed
        ),
        "mse",
    )
    other.optimizer.build(other.trainable_variables)
    other.load_weights(path)
    assert int(other.optimizer.iterations) == 32
    assert float(
        other.optimizer.resolution_at(other.optimizer.schedule_step)
    ) == float(model.optimizer.resolution_at(model.optimizer.schedule_step))
    for a, b in zip(other.optimizer.momentums, model.optimizer.momentums):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_state_of_another_optimizer_warns_that_nothing_was_restored(tmp_path):
    x, y = data()
    model = make_model()
    model.compile(keras.optimizers.Adam(), "mse")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "adam.weights.h5"
    model.save_weights(path)
    other = make_model()
    other.compile(keras_qsgld.QSGLD(0.05, momentum=0.9, **schedules()), "mse")
    other.optimizer.build(other.trainable_variables)
    with pytest.warns(UserWarning, match="NOT restored.*schedules continue"):
        other.load_weights(path)
    assert int(other.optimizer.iterations) == 0
    assert_same_arrays(
        weights_of(other), weights_of(model)
    )  # the model's weights did load


@pytest.mark.parametrize("track_noise", [False, True])
@pytest.mark.parametrize("rounding", ["nearest", "dithered"])
def test_state_saved_by_version_0_1_loads(rounding, track_noise):
    """keras-qsgld 0.1.0 saved the noise statistics (with track_noise=True) and had no
    generator state with a deterministic rounding; such files still restore."""
    v = keras.Variable(np.zeros((3, 2), np.float32))
    opt = keras_qsgld.QSGLD(
        0.1, resolution=1024.0, momentum=0.9, rounding=rounding, seed=1
    )
    opt.build([v])
    momentum = np.arange(6, dtype=np.float32).reshape(3, 2)
    legacy = [
        np.array(17),
        np.array(0.25, np.float32),
    ]  # iterations, learning rate
    if rounding == "dithered":
        legacy.append(np.array([1, 9]))
    if track_noise:
        legacy += [np.array(1.0, np.float32)] * 4
    legacy.append(momentum)
    opt.load_own_variables({str(i): value for i, value in enumerate(legacy)})
    assert int(opt.iterations) == 17 and float(opt.learning_rate) == 0.25
    np.testing.assert_array_equal(opt.momentums[0].numpy(), momentum)
    if rounding == "dithered":
        np.testing.assert_array_equal(
            ops.convert_to_numpy(opt._seed_generator.state), [1, 9]
        )


# -- .keras files between backends -------------------------------------------------------------
OTHER_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "jax"}


def run_python(code, *args, **env):
    """Runs `python -c CODE ARGS` in the tests' environment (with `env` on top) and returns
    its stdout; fails the test with the end of its stderr if it fails."""
    result = runner.capture("-c", code, *args, env=runner.script_env(**env))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


LOAD_ELSEWHERE = """
import sys, numpy as np, keras, keras_qsgld
model = keras.saving.load_model(sys.argv[1])
opt = model.optimizer
print("backend", keras.backend.backend(), "class", type(opt).__name__, "iterations", int(opt.iterations))
seed = [int(s) for s in np.asarray(opt._seed_generator.state.numpy())]
print("qp", float(opt.resolution_at(opt.schedule_step)), "seed", seed)
x = np.random.default_rng(0).normal(size=(16, 8)).astype("float32")
model.fit(x, x[:, :1], batch_size=8, epochs=1, verbose=0)
print("after", int(opt.iterations), bool(np.all([np.all(np.isfinite(w)) for w in model.get_weights()])))
"""


@pytest.mark.parametrize("cls", OPTIMIZERS)
def test_keras_file_moves_to_another_backend(cls, tmp_path):
    """A run saved on this backend resumes on another: class, schedules, step count and the
    random generator's state come back (the arithmetic then is the other backend's)."""
    x, y = data()
    model = make_model()
    model.compile(make_optimizer(cls, rounding="dithered", seed=7), "mse")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    path = tmp_path / "run.keras"
    model.save(path)
    opt = model.optimizer
    other = OTHER_BACKEND[BACKEND]
    out = run_python(LOAD_ELSEWHERE, path, KERAS_BACKEND=other)
    assert f"backend {other} class {cls.__name__} iterations 8" in out
    assert f"qp {float(opt.resolution_at(opt.schedule_step))} " in out
    seed = [int(s) for s in np.asarray(opt._seed_generator.state.numpy())]
    assert (
        f"seed {seed}" in out and "after 10 True" in out
    )  # 16 examples in batches of 8


FIT_AND_HASH = """
import hashlib, numpy as np, keras, keras_qsgld
rng = np.random.default_rng(0)
x = rng.normal(size=(256, 64)).astype("float32")
y = rng.integers(0, 10, 256).astype("int32")
for cls, kwargs in [(keras_qsgld.QSGLD, dict(learning_rate=0.05, momentum=0.9)),
                    (keras_qsgld.QAdam, dict(learning_rate=0.001)),
                    (keras_qsgld.QSGLD, dict(learning_rate=0.05, rounding="dithered", seed=3))]:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])
    optimizer = cls(resolution=keras_qsgld.ResolutionSchedule(steps_per_epoch=8),
                    compensation=keras_qsgld.CompensationSchedule(tau0=2, steps_per_epoch=8), **kwargs)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    print(hashlib.sha256(b"".join(w.tobytes() for w in model.get_weights())).hexdigest())
"""


@pytest.mark.backends("jax")
def test_xla_cpu_scheduler_flag_keeps_the_weights_bitwise():
    """The README's speed tip for JAX on a CPU (XLA's depth-first scheduler, a process-wide
    flag) reorders the work only: three fits end with the same weights, bit for bit."""
    default = run_python(FIT_AND_HASH).split()
    assert len(set(default)) == 3
    flag = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
    assert run_python(FIT_AND_HASH, XLA_FLAGS=flag).split() == default


# The ways `fit` runs an update: op by op, in a graph (TensorFlow: a tf.function without XLA,
# QSGLD's own XLA update inside), compiled (XLA, jax.jit, torch.compile).
FIT_MODES = {
    "eager": dict(run_eagerly=True),
    "graph": dict(jit_compile=False),
    "compiled": dict(jit_compile=True),
}


@pytest.mark.parametrize(
    "floatx", [FLOAT_DTYPES[1], "bfloat16"]
)  # float64 marked
@pytest.mark.parametrize("cls", OPTIMIZERS)
@pytest.mark.parametrize("mode", list(FIT_MODES))
@pytest.mark.parametrize("schedule", [False, True])
def test_every_floatx_trains(floatx, cls, mode, schedule):
    """`keras.config.set_floatx` makes the variables, the learning rate and a schedule's
    values float64 or bfloat16: the update runs on them as Keras' SGD does (it crashed on
    TensorFlow, converting a float64 learning rate to float32)."""
    if BACKEND == "torch" and mode == "compiled" and schedule:
        pytest.skip(
            "one compiled case per optimizer keeps torch.compile's time down"
        )
    # The global dtype policy, once made, no longer follows floatx: set both, as a fresh
    # process that sets floatx first has them.
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(floatx)
    try:
        lr = (
            keras.optimizers.schedules.ExponentialDecay(0.05, 5, 0.9)
            if schedule
            else 0.05
        )
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        before = [np.array(w, np.float64) for w in model.get_weights()]
        model.compile(
            optimizer=cls(lr, resolution=2.0**12, compensation=0.5),
            loss="mse",
            **FIT_MODES[mode],
        )
        rng = np.random.default_rng(0)
        x = rng.normal(size=(16, 4)).astype(floatx)
        model.fit(x, x[:, :1], batch_size=8, epochs=2, verbose=0)
        after = [np.array(w, np.float64) for w in model.get_weights()]
        assert model.weights[0].dtype == floatx
        assert all(np.isfinite(w).all() for w in after)
        assert any(not np.array_equal(a, b) for a, b in zip(after, before))
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
