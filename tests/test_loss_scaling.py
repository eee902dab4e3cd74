"""Loss scaling and other optimizer wrappers that apply inside a `tf.cond`, with
steps whose apply is skipped (a non-finite gradient), on TF 1.15 (a v1 cond:
`Switch` / `Merge`) and TF 2 (an `If` op).

Every run of the training step updates the averages once, with the weights it
produced and the global step it leaves: a skipped apply leaves the weights,
and the global step where the wrapper does (the loss-scale optimizers do not
add to it), and the average moves toward those weights. Each test records the
weights after every run and checks every checkpoint Estimator writes against
a numpy oracle of the runs before it.
"""

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import BATCH, DATA, EMA, IS_TF1, SWA, run_config, tf1
from test_ordering import Recorder, ema_of, linear, spec, swa_of

STEPS = 9
# The second of the four batches has infinite labels: its gradient is not finite.
POISONED = 1


def poisoned_input_fn():
    x, y = DATA
    y = y.copy()
    y[POISONED * BATCH:(POISONED + 1) * BATCH] = np.inf
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).repeat()


class RunCheckpointReader(tf1.train.CheckpointSaverListener):
    """Reads the averages from every checkpoint right after it is written, with
    the number of runs before it. Estimator's CheckpointSaverHook runs before
    the user's hooks: at a save after run i, the Recorder holds i entries (the
    session's start and runs 1 to i - 1)."""

    def __init__(self, model_dir, suffix, recorder):
        self.model_dir, self.suffix, self.recorder = str(model_dir), suffix, recorder
        self.saved = []  # [(global step, runs before it, {variable name: average})]

    def after_save(self, session, global_step_value):
        reader = tf1.train.NewCheckpointReader(tf.train.latest_checkpoint(self.model_dir))
        end = "/" + self.suffix
        averages = {key[:-len(end)]: reader.get_tensor(key)
                    for key in reader.get_variable_to_shape_map() if key.endswith(end)}
        self.saved.append((int(global_step_value), len(self.recorder.record), averages))


ORACLES = {
    "ema": (estimator_ema.with_ema, estimator_ema.ExponentialMovingAverageHook,
            dict(decay=0.8), lambda runs, start: ema_of(runs, 0.8, start), EMA),
    "swa": (estimator_ema.with_swa, estimator_ema.StochasticWeightAveragingHook,
            dict(start_step=3), lambda runs, start: swa_of(runs, 3, start), SWA),
}


def train(model_dir, model_fn, how, kind):
    """Trains STEPS runs on the poisoned data, saving every step; checks every
    checkpoint against the oracle of the runs before it; returns the record."""
    decorate, make_hook, options, oracle, suffix = ORACLES[kind]
    hooks = [make_hook(**options)] if how == "hook" else []
    if how == "decorator":
        model_fn = decorate(model_fn, **options)
    est = tf.estimator.Estimator(model_fn, str(model_dir), config=run_config(
        save_checkpoints_steps=1, keep_checkpoint_max=1))
    recorder = Recorder()
    reader = RunCheckpointReader(model_dir, suffix, recorder)
    est.train(poisoned_input_fn, steps=STEPS, hooks=hooks + [recorder],
              saving_listeners=[reader])
    record = recorder.record
    start = record[0][1]
    assert reader.saved
    for step, runs, averages in reader.saved:
        # The checkpoint was written after run `runs` (the session's start for 0).
        assert record[runs][0] == step
        expected = oracle(record[1:runs + 1], {name: start[name] for name in averages})
        assert sorted(averages) == ["linear/b", "linear/w"]
        for name, value in averages.items():
            np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6,
                                       err_msg="%s in the checkpoint of step %d"
                                       % (name, step))
    return record


def skipped(record):
    """The runs (1-based) that left the weights as they were."""
    return [i for i in range(1, len(record)) if all(
        np.array_equal(record[i][1][k], record[i - 1][1][k]) for k in ("linear/w", "linear/b"))]


def check_skips(record, skip_adds_to_the_step):
    """The runs on the poisoned batch, and only they, skipped the apply; the
    global step after each run."""
    runs = len(record) - 1
    poisoned = [i for i in range(1, runs + 1) if (i - 1) % (len(DATA[0]) // BATCH) == POISONED]
    assert skipped(record) == poisoned
    steps = [0]
    for i in range(1, runs + 1):
        steps.append(steps[-1] + (skip_adds_to_the_step or i not in poisoned))
    assert [step for step, _ in record] == steps
    assert steps[-1] == STEPS


def _gradients(features, labels, use_resource=True):
    w, b, predictions = linear(features, use_resource=use_resource)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    optimizer = tf1.train.GradientDescentOptimizer(0.1)
    grads = optimizer.compute_gradients(loss)
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g, _ in grads])
    return optimizer, grads, finite, loss, predictions


def cond_train_op_model_fn(features, labels, mode, params):
    """The train op is the `tf.cond` itself: apply, or skip (`params["skip"]`:
    "step" adds one to the global step, "nothing" leaves it); with
    `params["identity"]` the branches return a tensor and the train op is an
    identity of the cond's output; `params["reference"]`: reference variables."""
    optimizer, grads, finite, loss, predictions = _gradients(
        features, labels, use_resource=not params.get("reference"))
    step = tf1.train.get_or_create_global_step()

    def branch(op, value):
        if not params.get("identity"):
            return tf.group(op)
        with tf.control_dependencies([op]):
            return tf.constant(value)

    def apply():
        return branch(optimizer.apply_gradients(grads, step), True)

    def skip():
        return branch(tf1.assign_add(step, 1) if params["skip"] == "step" else tf.no_op(),
                      False)

    train_op = tf.cond(finite, apply, skip)
    if params.get("identity"):
        train_op = tf.identity(train_op)
    return spec(mode, loss, train_op, predictions)


def loss_scale_model_fn(features, labels, mode, params):
    """A loss-scale optimizer with a dynamic scale (it skips the apply, and the
    global step, on a non-finite gradient)."""
    w, b, predictions = linear(features, use_resource=True)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    sgd = tf1.train.GradientDescentOptimizer(0.1)
    if params["wrapper"] == "contrib":
        from tensorflow.contrib import mixed_precision
        optimizer = mixed_precision.LossScaleOptimizer(
            sgd, mixed_precision.ExponentialUpdateLossScaleManager(2.0 ** 10, 2))
    elif params["wrapper"] == "graph_rewrite":
        enable = (tf1.train.experimental.enable_mixed_precision_graph_rewrite if IS_TF1
                  else tf1.mixed_precision.enable_mixed_precision_graph_rewrite)
        optimizer = enable(sgd)
    else:
        wrapper = (tf1.train.experimental.MixedPrecisionLossScaleOptimizer if IS_TF1
                   else tf1.mixed_precision.MixedPrecisionLossScaleOptimizer)
        optimizer = wrapper(sgd, "dynamic")
    train_op = optimizer.minimize(loss, tf1.train.get_or_create_global_step())
    return spec(mode, loss, train_op, predictions)


def with_params(model_fn, **params):
    def bound(features, labels, mode):
        return model_fn(features, labels, mode, params)
    return bound


@pytest.mark.parametrize("kind", ["ema", "swa"])
@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("identity", [False, True], ids=["cond", "identity_of_cond"])
def test_a_cond_train_op_whose_skip_adds_to_the_step(tmp_path, how, kind, identity):
    record = train(tmp_path, with_params(cond_train_op_model_fn, skip="step",
                                         identity=identity), how, kind)
    check_skips(record, skip_adds_to_the_step=True)


@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("identity", [False, True], ids=["cond", "identity_of_cond"])
def test_a_cond_train_op_whose_skip_leaves_the_step(tmp_path, how, identity):
    record = train(tmp_path, with_params(cond_train_op_model_fn, skip="nothing",
                                         identity=identity), how, "ema")
    check_skips(record, skip_adds_to_the_step=False)


@pytest.mark.skipif(not IS_TF1, reason="TF 2's tf.cond cannot assign reference variables")
@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("skip", ["step", "nothing"])
def test_a_cond_train_op_over_reference_variables(tmp_path, how, skip):
    record = train(tmp_path, with_params(cond_train_op_model_fn, skip=skip, reference=True),
                   how, "ema")
    check_skips(record, skip_adds_to_the_step=skip == "step")


WRAPPERS = [
    "mixed_precision",
    "graph_rewrite",
    pytest.param("contrib", marks=pytest.mark.skipif(
        not IS_TF1, reason="tf.contrib is TF 1 only")),
]


@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_a_loss_scale_optimizer_that_skips_steps(tmp_path, how, wrapper):
    try:
        record = train(tmp_path, with_params(loss_scale_model_fn, wrapper=wrapper), how, "ema")
    finally:
        if wrapper == "graph_rewrite":
            (tf1.train.experimental.disable_mixed_precision_graph_rewrite if IS_TF1
             else tf1.mixed_precision.disable_mixed_precision_graph_rewrite)()
    check_skips(record, skip_adds_to_the_step=False)
