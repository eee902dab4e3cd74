"""The ordering rule: the average after a step is of the weights that step produced.

Each test trains a small model whose training step has an unusual shape (ops after
the optimizer, a Keras optimizer, an apply inside `tf.cond`, batch-norm updates
inside a branch, reference variables, several optimizers, a Scaffold init_fn)
with the hook and with the decorator, records the weights after every step, and
checks every checkpoint Estimator writes against a numpy oracle of that record.
"""

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (EMA, FEATURES, IS_TF1, LEARNING_RATE, SWA, input_fn, keras_sgd,
                      run_config, tf1)

STEPS = 7


class Recorder(tf1.train.SessionRunHook):
    """Records the values of every global variable (shadows aside) and the
    global step as the session starts and after each step."""

    def begin(self):
        graph = tf1.get_default_graph()
        self.step = tf1.train.get_global_step(graph)
        self.variables = {v.op.name: v for v in tf1.global_variables()
                          if not v.op.name.endswith((EMA, SWA, "/count", "/biased",
                                                     "/local_step"))}
        self.record = []  # [(global step, {name: value})]

    def _read(self, session):
        step, values = session.run([self.step, self.variables])
        self.record.append((int(step), values))

    def after_create_session(self, session, coord):
        self._read(session)

    def after_run(self, run_context, run_values):
        self._read(run_context.session)


class CheckpointReader(tf1.train.CheckpointSaverListener):
    """Reads the averages from every checkpoint right after it is written."""

    def __init__(self, model_dir, suffix):
        self.model_dir, self.suffix = str(model_dir), suffix
        self.saved = []  # [(global step, {variable name: average})]

    def after_save(self, session, global_step_value):
        path = tf.train.latest_checkpoint(self.model_dir)
        reader = tf1.train.NewCheckpointReader(path)
        end = "/" + self.suffix
        averages = {key[:-len(end)]: reader.get_tensor(key)
                    for key in reader.get_variable_to_shape_map() if key.endswith(end)}
        self.saved.append((int(global_step_value), averages))


def ema_of(record, decay, start, every_n_steps=1):
    """{name: numpy EMA} over the recorded weights (num_updates=True)."""
    averages = {k: np.asarray(v, np.float64) for k, v in start.items()}
    for step, values in record:
        if step % every_n_steps:
            continue
        d = min(decay, (1.0 + step) / (10.0 + step)) ** every_n_steps
        averages = {k: a - (a - values[k]) * (1 - d) for k, a in averages.items()}
    return averages


def swa_of(record, start_step, start):
    """{name: numpy SWA}: the weights after steps >= start_step (step 0 the start)."""
    entries = [values for step, values in [(0, start)] + record if step >= start_step]
    if not entries:
        return dict(record[-1][1]) if record else dict(start)
    return {k: np.mean([e[k] for e in entries], axis=0) for k in start}


def check_every_checkpoint(recorder, reader, oracle):
    """Every saved average equals `oracle(record up to that step, start weights)`."""
    assert reader.saved, "no checkpoint was written"
    start_step, start = recorder.record[0]
    after = recorder.record[1:]
    checked = 0
    for step, averages in reader.saved:
        assert averages, "checkpoint %d has no averages" % step
        expected = oracle([r for r in after if start_step < r[0] <= step],
                          {k: start[k] for k in averages})
        for name, value in averages.items():
            np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6,
                                       err_msg="%s in checkpoint %d" % (name, step))
        checked += 1
    return checked


AVERAGING = {
    "ema": (dict(decay=0.8), lambda record, start: ema_of(record, 0.8, start), EMA),
    "ema_every_2": (dict(decay=0.8, every_n_steps=2),
                    lambda record, start: ema_of(record, 0.8, start, 2), EMA),
    "ema_skip_nonfinite": (dict(decay=0.8, skip_nonfinite=True),
                           lambda record, start: ema_of(record, 0.8, start), EMA),
    "swa": (dict(start_step=3), lambda record, start: swa_of(record, 3, start), SWA),
}


def train(model_dir, model_fn, how, kind, steps=STEPS, params=None, resume_steps=0):
    """Trains `model_fn` averaged `how` ("hook" or "decorator") with `kind` (a key of
    AVERAGING), saving every step; checks every checkpoint; returns how many."""
    options, oracle, suffix = AVERAGING[kind]
    swa = kind.startswith("swa")
    if how == "decorator":
        model_fn = (estimator_ema.with_swa if swa else estimator_ema.with_ema)(
            model_fn, **options)
        hooks = []
    else:
        make = (estimator_ema.StochasticWeightAveragingHook if swa
                else estimator_ema.ExponentialMovingAverageHook)
        hooks = [make(**options)]
    est = tf.estimator.Estimator(model_fn, str(model_dir), params=params,
                                 config=run_config(save_checkpoints_steps=1,
                                                   keep_checkpoint_max=1))
    recorder, reader = Recorder(), CheckpointReader(model_dir, suffix)
    est.train(input_fn, steps=steps, hooks=hooks + [recorder], saving_listeners=[reader])
    record = recorder.record
    if resume_steps:
        resumed = Recorder()
        est.train(input_fn, steps=resume_steps, hooks=hooks + [resumed],
                  saving_listeners=[reader])
        record = record + resumed.record[1:]
    recorder.record = record
    return check_every_checkpoint(recorder, reader, oracle)


def linear(features, use_resource=None):
    w = tf1.get_variable("linear/w", [FEATURES, 1], initializer=tf1.zeros_initializer(),
                         use_resource=use_resource)
    b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer(),
                         use_resource=use_resource)
    return w, b, tf.matmul(features, w) + b


def spec(mode, loss, train_op, predictions):
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op,
                                      predictions={"y": predictions})


def clipped_model_fn(features, labels, mode):
    """Decoupled weight clipping after `minimize(global_step=...)` (WGAN style)."""
    w, b, predictions = linear(features)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    step = tf1.train.get_or_create_global_step()
    minimize = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(loss, step)
    with tf.control_dependencies([minimize]):
        train_op = tf.group(tf1.assign(w, tf.clip_by_value(w, -0.3, 0.3)))
    return spec(mode, loss, train_op, predictions)


def keras_model_fn(features, labels, mode):
    """A Keras optimizer (no TRAIN_OP entry), then the global-step increment."""
    w, b, predictions = linear(features, use_resource=True)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    optimizer = keras_sgd(LEARNING_RATE)
    apply = optimizer.apply_gradients(zip(tf.gradients(loss, [w, b]), [w, b]))
    with tf.control_dependencies([apply]):
        train_op = tf1.assign_add(tf1.train.get_or_create_global_step(), 1)
    return spec(mode, loss, train_op, predictions)


def cond_apply_model_fn(features, labels, mode):
    """The optimizer applies inside a `tf.cond` (as loss-scaling wrappers do)."""
    w, b, predictions = linear(features, use_resource=True)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    step = tf1.train.get_or_create_global_step()
    optimizer = tf1.train.GradientDescentOptimizer(LEARNING_RATE)
    grads = optimizer.compute_gradients(loss)
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g, _ in grads])

    def apply():
        with tf.control_dependencies([optimizer.apply_gradients(grads, step)]):
            return tf.constant(True)

    def skip():
        with tf.control_dependencies([tf1.assign_add(step, 1)]):
            return tf.constant(False)

    train_op = tf.group(tf.cond(finite, apply, skip))
    return spec(mode, loss, train_op, predictions)


def step_in_branches_model_fn(features, labels, mode):
    """The train op is a `tf.cond` whose branches both add to the global step,
    one after applying the gradients (a skip-on-non-finite step)."""
    w, b, predictions = linear(features, use_resource=True)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    step = tf1.train.get_or_create_global_step()
    optimizer = tf1.train.GradientDescentOptimizer(LEARNING_RATE)
    grads = optimizer.compute_gradients(loss)
    train_op = tf.cond(tf.math.is_finite(loss),
                       lambda: tf.group(optimizer.apply_gradients(grads, step)),
                       lambda: tf.group(tf1.assign_add(step, 1)))
    return spec(mode, loss, train_op, predictions)


def loss_scale_model_fn(features, labels, mode, params):
    """The v1 mixed-precision loss-scale optimizer, with a fixed or a dynamic
    loss scale (which applies inside a `tf.cond`)."""
    w, b, predictions = linear(features, use_resource=True)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    wrapper = (tf1.train.experimental.MixedPrecisionLossScaleOptimizer if IS_TF1
               else tf1.mixed_precision.MixedPrecisionLossScaleOptimizer)
    optimizer = wrapper(tf1.train.GradientDescentOptimizer(LEARNING_RATE),
                        params.get("loss_scale", "dynamic"))
    train_op = optimizer.minimize(loss, tf1.train.get_or_create_global_step())
    return spec(mode, loss, train_op, predictions)


def fixed_loss_scale_model_fn(features, labels, mode):
    return loss_scale_model_fn(features, labels, mode, {"loss_scale": 128.0})


def two_optimizers_model_fn(features, labels, mode):
    """DNNLinearCombined's shape: two optimizers in TRAIN_OP, grouped, then the
    global-step increment."""
    w, b, predictions = linear(features)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    step = tf1.train.get_or_create_global_step()
    train_ops = [tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(loss, var_list=[w]),
                 tf1.train.MomentumOptimizer(LEARNING_RATE, 0.5).minimize(loss, var_list=[b])]
    with tf.control_dependencies([tf.group(*train_ops)]):
        train_op = tf1.assign_add(step, 1)
    return spec(mode, loss, train_op, predictions)


def reference_model_fn(features, labels, mode):
    """Reference variables (`use_resource=False`) with plain SGD."""
    w, b, predictions = linear(features, use_resource=False)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(
        loss, tf1.train.get_or_create_global_step())
    return spec(mode, loss, train_op, predictions)


SHAPES = {
    "ops_after_the_optimizer": clipped_model_fn,
    "keras_optimizer": keras_model_fn,
    "apply_inside_cond": cond_apply_model_fn,
    "dynamic_loss_scale": loss_scale_model_fn,
    "fixed_loss_scale": fixed_loss_scale_model_fn,
    "two_optimizers": two_optimizers_model_fn,
    "reference_variables": reference_model_fn,
}


@pytest.mark.parametrize("kind", sorted(AVERAGING))
@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_checkpoint_holds_the_average_of_its_step(tmp_path, shape, how, kind):
    assert train(tmp_path, SHAPES[shape], how, kind) == STEPS + 1


@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("shape", ["keras_optimizer", "ops_after_the_optimizer"])
def test_a_resumed_run_continues_the_average_of_the_last_checkpoint(tmp_path, shape, how):
    assert train(tmp_path, SHAPES[shape], how, "ema", steps=4, resume_steps=3) == 4 + 1 + 3 + 1


@pytest.mark.parametrize("kind", sorted(AVERAGING))
@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_a_cond_train_op_is_averaged_after_its_branch(tmp_path, how, kind):
    # In TF 2 the cond is an `If` op, and a control edge from it does not wait
    # for its branch's writes (only its outputs do); in TF 1 it is a `Merge`
    # op outside the branches, after the taken branch's writes.
    assert train(tmp_path, step_in_branches_model_fn, how, kind) == STEPS + 1


def test_the_hook_leaves_the_clip_op_alone_and_averages_clipped_weights(tmp_path):
    train(tmp_path, clipped_model_fn, "hook", "ema")
    w = tf.train.load_variable(str(tmp_path), "linear/w")
    assert np.all(np.abs(w) <= 0.3 + 1e-7)


def statistic():
    return tf1.get_variable("bn/moving_mean", [], initializer=tf1.zeros_initializer(),
                            trainable=False, use_resource=True)


def branch_statistic_model_fn(features, labels, mode, params):
    """Stochastic-depth style: a statistic updated inside a `tf.cond` branch,
    in UPDATE_OPS; `params["wired"]`: the branch returns its output after it."""
    w, b, predictions = linear(features, use_resource=True)
    mean = statistic()
    step = tf1.train.get_or_create_global_step()

    def taken():
        update = tf1.assign_add(mean, tf.reduce_mean(features)).op
        tf1.add_to_collection(tf1.GraphKeys.UPDATE_OPS, update)
        if not params["wired"]:
            return tf.identity(predictions)
        with tf.control_dependencies([update]):
            return tf.identity(predictions)

    # Taken on odd global steps, so some steps leave the statistic alone.
    output = tf.cond(tf.equal(step % 2, 1), taken, lambda: tf.identity(predictions))
    loss = tf.reduce_mean(tf.square(output - labels))
    train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(loss, step)
    return spec(mode, loss, train_op, predictions)


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_a_statistic_updated_inside_a_branch_is_averaged_after_the_branch(tmp_path, how):
    assert train(tmp_path, branch_statistic_model_fn, how, "ema",
                 params={"wired": True}) == STEPS + 1
    # Taken on steps 1, 3, 5, 7 (the statistic moved on those steps only).
    assert tf.train.load_variable(str(tmp_path), "bn/moving_mean") != 0


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_an_unwired_update_inside_a_branch_fails_naming_it(tmp_path, how):
    with pytest.raises(ValueError, match=r"UPDATE_OPS op '.*AssignAdd.*' is built inside a "
                                         r"tf.cond or tf.while_loop branch"):
        train(tmp_path, branch_statistic_model_fn, how, "ema", params={"wired": False})


def init_fn_model_fn(features, labels, mode):
    """tf_slim / object-detection fine-tuning: a Scaffold init_fn sets the weights."""
    w, b, predictions = linear(features)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(
        loss, tf1.train.get_or_create_global_step())
    start = [tf1.assign(w, [[0.5], [0.25], [-0.5]]), tf1.assign(b, [1.0])]
    scaffold = tf1.train.Scaffold(init_fn=lambda scaffold, session: session.run(start))
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op, scaffold=scaffold,
                                      predictions={"y": predictions})


@pytest.mark.parametrize("kind", ["ema", "swa"])
@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_averages_start_from_weights_a_scaffold_init_fn_set(tmp_path, how, kind):
    # The hook sets the averages after Estimator's step-0 checkpoint: check from step 1.
    options, oracle, suffix = AVERAGING[kind]
    recorder, reader = Recorder(), CheckpointReader(tmp_path, suffix)
    model_fn = init_fn_model_fn
    hooks = [recorder]
    if how == "decorator":
        model_fn = (estimator_ema.with_swa if kind == "swa" else estimator_ema.with_ema)(
            model_fn, **options)
    else:
        hooks.insert(0, (estimator_ema.StochasticWeightAveragingHook if kind == "swa"
                         else estimator_ema.ExponentialMovingAverageHook)(**options))
    est = tf.estimator.Estimator(model_fn, str(tmp_path),
                                 config=run_config(save_checkpoints_steps=1))
    est.train(input_fn, steps=4, hooks=hooks, saving_listeners=[reader])
    assert recorder.record[0][1]["linear/b"] == [1.0]
    reader.saved = [(step, averages) for step, averages in reader.saved if step > 0]
    assert check_every_checkpoint(recorder, reader, oracle) == 4


def write_beside_the_train_op_model_fn(features, labels, mode):
    """The reported loss waits for a write of `w` that the train op does not run."""
    w, b, predictions = linear(features)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(
        loss, tf1.train.get_or_create_global_step())
    with tf.control_dependencies([tf1.assign_add(w, tf.zeros_like(w))]):
        reported = tf.identity(loss)
    return spec(mode, reported, train_op, predictions)


def step_elsewhere_model_fn(features, labels, mode):
    """The train op writes the weights; a hook increments the global step."""
    w, b, predictions = linear(features)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    increment = tf1.assign_add(tf1.train.get_or_create_global_step(), 1)
    tf1.add_to_collection("increment", increment)
    train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(loss)
    return spec(mode, loss, train_op, predictions)


class Increment(tf1.train.SessionRunHook):
    def before_run(self, run_context):
        return tf1.train.SessionRunArgs(tf1.get_collection("increment"))


def test_the_hook_refuses_a_write_its_update_cannot_follow(tmp_path):
    est = tf.estimator.Estimator(write_beside_the_train_op_model_fn, str(tmp_path))
    with pytest.raises(RuntimeError, match=r"the training step runs \S*AssignAdd\S*, "
                                           r"which write averaged variables or the global step "
                                           r"but are not run by its train op"):
        est.train(input_fn, steps=2, hooks=[estimator_ema.ExponentialMovingAverageHook()])


def test_the_hook_refuses_a_step_that_writes_without_a_train_op(tmp_path):
    est = tf.estimator.Estimator(step_elsewhere_model_fn, str(tmp_path))
    with pytest.raises(RuntimeError, match=r"the training step's fetches run 0 train op\(s\) "
                                           r"\(none\) where the hook expects one op"):
        est.train(input_fn, steps=2,
                  hooks=[estimator_ema.ExponentialMovingAverageHook(), Increment()])
