"""Partitioned variables: the average of a partitioned variable is saved as TF saves
the variable, under its full name `<full>/<name>`, sliced like the variable, and
every helper works with it, including on checkpoints stock TF code wrote."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (DATA, EMA, FEATURES, LEARNING_RATE, SWA, ema_oracle, input_fn, load,
                      run_config, serve, serving_input_receiver_fn, sgd_weights, swa_oracle)
from estimator_ema import cli

tf1 = tf.compat.v1

DECAY = 0.8
STEPS = 6


def partitioned_model_fn(features, labels, mode):
    """The conftest linear model with `linear/w` in two parts ([2, 1] and [1, 1])."""
    w = tf1.get_variable("linear/w", [FEATURES, 1], initializer=tf1.zeros_initializer(),
                         partitioner=tf1.fixed_size_partitioner(2))
    b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer())
    predictions = tf.matmul(features, tf.concat(list(w), 0)) + b
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf.reduce_mean(tf.square(predictions - labels))
    train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op,
                                      predictions={"y": predictions})


def _estimator(model_dir, model_fn=partitioned_model_fn, **kwargs):
    return tf.estimator.Estimator(model_fn, str(model_dir), config=run_config(), **kwargs)


def _train(model_dir, how):
    if how == "hook":
        est = _estimator(model_dir)
        est.train(input_fn, steps=STEPS, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY)])
    else:
        est = _estimator(model_dir, estimator_ema.with_ema(partitioned_model_fn, decay=DECAY))
        est.train(input_fn, steps=STEPS)
    return est


def _oracle():
    """(w, b) averages of the linear model after STEPS steps."""
    return ema_oracle(sgd_weights(STEPS), DECAY)


def _predict(est, **kwargs):
    return np.array([p["y"] for p in est.predict(
        lambda: tf.data.Dataset.from_tensor_slices(DATA[0]).batch(8), **kwargs)])


@pytest.fixture(params=["hook", "decorator"])
def trained(request, model_dir):
    return _train(model_dir, request.param)


def test_averages_are_saved_under_the_full_name_sliced(trained, model_dir):
    keys = dict(tf.train.list_variables(str(model_dir)))
    assert keys["linear/w/" + EMA] == [FEATURES, 1]
    assert not [key for key in keys if "part_" in key]
    w, b = _oracle()
    np.testing.assert_allclose(load(model_dir, "linear/w/" + EMA), w, atol=1e-6)
    np.testing.assert_allclose(load(model_dir, "linear/b/" + EMA), b, atol=1e-6)
    averages = estimator_ema.read_averages(str(model_dir))
    assert sorted(averages) == ["linear/b", "linear/w"]
    np.testing.assert_allclose(averages["linear/w"], w, atol=1e-6)


def test_stock_moving_average_reads_them(trained, model_dir):
    """A graph built by stock code maps its parts' averages as slot_creator names them."""
    with tf.Graph().as_default():
        w = tf1.get_variable("linear/w", [FEATURES, 1], partitioner=tf1.fixed_size_partitioner(2))
        tf1.get_variable("linear/b", [1])
        ema = tf1.train.ExponentialMovingAverage(DECAY)
        ema.apply(tf1.trainable_variables())
        saver = tf1.train.Saver([ema.average(v) for v in tf1.trainable_variables()])
        with tf1.Session() as session:
            saver.restore(session, tf.train.latest_checkpoint(str(model_dir)))
            value = session.run(tf.concat([ema.average(p) for p in w], 0))
    np.testing.assert_allclose(value, _oracle()[0], atol=1e-6)


def test_every_way_of_serving_them_agrees(trained, model_dir, tmp_path):
    w, b = _oracle()
    expected = DATA[0] @ w + b
    raw = DATA[0] @ load(model_dir, "linear/w") + load(model_dir, "linear/b")
    assert np.abs(expected - raw).max() > 1e-2
    averaged = estimator_ema.averaged_estimator(_estimator(model_dir))
    np.testing.assert_allclose(_predict(averaged), expected, atol=1e-5)
    output = estimator_ema.write_averaged_checkpoint(str(model_dir),
                                                     str(tmp_path / "rewritten" / "model.ckpt"))
    assert sorted(k for k, _ in tf.train.list_variables(output)) == [
        "global_step", "linear/b", "linear/w"]
    np.testing.assert_allclose(_predict(_estimator(tmp_path / "rewritten")), expected, atol=1e-5)
    export_dir = estimator_ema.export_saved_model(_estimator(model_dir), str(tmp_path / "export"),
                                                  serving_input_receiver_fn)
    np.testing.assert_allclose(serve(export_dir, DATA[0], "loader.load"), expected, atol=1e-5)


def test_the_decorator_evaluates_them(model_dir):
    est = _train(model_dir, "decorator")
    w, b = _oracle()
    np.testing.assert_allclose(_predict(est), DATA[0] @ w + b, atol=1e-5)


def test_restore_averages_loads_each_part_its_slice(trained, model_dir):
    with tf.Graph().as_default() as graph:
        w = tf1.get_variable("linear/w", [FEATURES, 1], partitioner=tf1.fixed_size_partitioner(2))
        tf1.get_variable("linear/b", [1])
        tf1.train.get_or_create_global_step()
        with tf1.Session(graph=graph) as session:
            restored = estimator_ema.restore_averages(session, str(model_dir))
            value = session.run(tf.concat(list(w), 0))
    assert restored["linear/w/part_1"] == "linear/w/" + EMA
    np.testing.assert_allclose(value, _oracle()[0], atol=1e-6)


def test_warm_start_from_averages(trained, model_dir, tmp_path):
    settings = estimator_ema.warm_start_from_averages(str(model_dir))
    new = _estimator(tmp_path / "new", warm_start_from=settings)
    w, b = _oracle()
    np.testing.assert_allclose(_predict(new), DATA[0] @ w + b, atol=1e-5)


def test_cli_inspect_and_export(trained, model_dir, tmp_path):
    out = io.StringIO()
    cli.run_inspect(str(model_dir), EMA, out)
    rows = {line.split()[0]: line.split() for line in out.getvalue().splitlines()[4:]}
    assert sorted(rows) == ["global_step", "linear/b", "linear/w"]
    assert rows["linear/w"][1:4] == ["[3,", "1]", "yes"]
    assert cli.main(["export", str(model_dir), str(tmp_path / "cli" / "model.ckpt")]) == 0
    np.testing.assert_allclose(load(tmp_path / "cli", "linear/w"), _oracle()[0], atol=1e-6)


def test_zero_debias_helpers_are_sliced_and_dropped(model_dir, tmp_path):
    est = _estimator(model_dir)
    est.train(input_fn, steps=STEPS,
              hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY, zero_debias=True)])
    keys = dict(tf.train.list_variables(str(model_dir)))
    assert keys["linear/w/%s/biased" % EMA] == [FEATURES, 1]
    np.testing.assert_allclose(
        load(model_dir, "linear/w/" + EMA),
        ema_oracle(sgd_weights(STEPS), DECAY, zero_debias=True)[0], atol=1e-6)
    output = estimator_ema.write_averaged_checkpoint(str(model_dir), str(tmp_path / "out" / "m"))
    assert sorted(k for k, _ in tf.train.list_variables(output)) == [
        "global_step", "linear/b", "linear/w"]


def test_swa_of_a_partitioned_variable(model_dir):
    est = _estimator(model_dir, estimator_ema.with_swa(partitioned_model_fn, start_step=2))
    est.train(input_fn, steps=STEPS)
    (w, b), _ = swa_oracle(sgd_weights(STEPS), start_step=2)
    np.testing.assert_allclose(estimator_ema.read_averages(str(model_dir), name=SWA)["linear/w"],
                               w, atol=1e-6)
    np.testing.assert_allclose(_predict(est), DATA[0] @ w + b, atol=1e-5)


def _stock_partitioned_checkpoint(model_dir, steps=4, decay=0.5):
    """Stock TF1 code: a partitioned `linear/w`, plain SGD and
    `ExponentialMovingAverage.apply` after the train op, saved by a plain Saver.
    Returns the weights and the averages, each as the whole tensor."""
    x, y = DATA
    with tf.Graph().as_default():
        w = tf1.get_variable("linear/w", [FEATURES, 1], initializer=tf1.zeros_initializer(),
                             partitioner=tf1.fixed_size_partitioner(3))
        b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer())
        loss = tf.reduce_mean(tf.square(tf.matmul(x[:8], tf.concat(list(w), 0)) + b - y[:8]))
        global_step = tf1.train.get_or_create_global_step()
        train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(
            loss, global_step=global_step)
        ema = tf1.train.ExponentialMovingAverage(decay)
        with tf.control_dependencies([train_op]):
            train_op = ema.apply(tf1.trainable_variables())
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            for _ in range(steps):
                session.run(train_op)
            os.makedirs(str(model_dir))
            tf1.train.Saver().save(session, os.path.join(str(model_dir), "model.ckpt"),
                                   global_step=global_step)
            return session.run([tf.concat(list(w), 0),
                                tf.concat([ema.average(p) for p in w], 0)])


def test_checkpoints_of_stock_code(model_dir, tmp_path):
    weight, average = _stock_partitioned_checkpoint(model_dir)
    assert not np.allclose(weight, average)
    averages = estimator_ema.read_averages(str(model_dir))
    np.testing.assert_array_equal(averages["linear/w"], average)
    output = estimator_ema.write_averaged_checkpoint(str(model_dir), str(tmp_path / "out" / "m"))
    np.testing.assert_array_equal(load(output, "linear/w"), average)
    checkpoint, rows = estimator_ema.checkpoints.describe(str(model_dir))
    assert [row[0] for row in rows] == ["global_step", "linear/b", "linear/w"]
    np.testing.assert_allclose(rows[2][3], np.linalg.norm(average - weight), rtol=1e-5)
