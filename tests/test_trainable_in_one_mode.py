"""A variable trainable in one mode only, as tensorflow-ranking's feature columns
(`trainable=(mode == TRAIN)`): what a decorated model_fn evaluates, predicts
and exports follows what the checkpoint holds, not its own graph's selection."""

import re

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (DATA, EMA, FEATURES, LEARNING_RATE, SWA, ema_oracle, input_fn, load,
                      run_config, serve, serving_input_receiver_fn, sgd_weights, swa_oracle,
                      tf1)

STEPS = 10
TRAIN = tf.estimator.ModeKeys.TRAIN


def model_fn(features, labels, mode, params):
    """y = x @ kernel + bias, MSE, SGD; `params["trainable"]` says in which modes
    each variable is trainable."""
    if isinstance(features, dict):
        features = features["x"]
    trainable = params["trainable"]
    kernel = tf1.get_variable("kernel", [FEATURES, 1], initializer=tf1.zeros_initializer(),
                              trainable=trainable["kernel"](mode))
    bias = tf1.get_variable("bias", [1], initializer=tf1.zeros_initializer(),
                            trainable=trainable["bias"](mode))
    predictions = tf.matmul(features, kernel) + bias
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf.reduce_mean(tf.square(predictions - labels))
    if mode != TRAIN:
        return tf.estimator.EstimatorSpec(mode, loss=loss, predictions={"y": predictions})
    train_op = tf1.train.GradientDescentOptimizer(LEARNING_RATE).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def always(mode):
    return True


def only_in_train(mode):
    return mode == TRAIN


def only_outside_train(mode):
    return mode != TRAIN


AVERAGING = {
    "ema": (lambda fn, **kw: estimator_ema.with_ema(fn, decay=0.8, **kw),
            lambda trajectory: ema_oracle(trajectory, 0.8), EMA),
    "swa": (lambda fn, **kw: estimator_ema.with_swa(fn, start_step=4, **kw),
            lambda trajectory: swa_oracle(trajectory, 4)[0], SWA),
}


def make_estimator(model_dir, kind, kernel, bias=always, **kwargs):
    decorate = AVERAGING[kind][0]
    return tf.estimator.Estimator(decorate(model_fn, **kwargs), str(model_dir),
                                  config=run_config(),
                                  params={"trainable": {"kernel": kernel, "bias": bias}})


def predict_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA[0]).batch(8)


def eval_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA).batch(32)


def predictions(est):
    return np.concatenate([p["y"][None] for p in est.predict(predict_input_fn)])


def numpy_loss(w, b):
    return np.mean((DATA[0] @ w + b - DATA[1]) ** 2)


def trained(model_dir, kind, kernel, bias=always):
    """Trains STEPS steps; returns the numpy (float64) averages and raw weights,
    checked against the checkpoint."""
    make_estimator(model_dir, kind, kernel, bias).train(input_fn, steps=STEPS)
    trajectory = sgd_weights(STEPS)
    averages, raw = AVERAGING[kind][1](trajectory), trajectory[-1]
    suffix = "/" + AVERAGING[kind][2]
    for name, average, weight in zip(["kernel", "bias"], averages, raw):
        np.testing.assert_allclose(load(model_dir, name + suffix), average, atol=1e-5)
        np.testing.assert_allclose(load(model_dir, name), weight, atol=1e-5)
    # The averages are far enough from the weights for a mix-up to show.
    assert abs(numpy_loss(*averages) - numpy_loss(*raw)) > 1e-2
    return averages, raw


@pytest.mark.parametrize("kind", ["ema", "swa"])
@pytest.mark.parametrize("bias", [always, only_in_train], ids=["bias_always",
                                                                "bias_only_in_train"])
def test_evaluate_and_predict_use_the_average_of_a_variable_trainable_only_in_train(
        model_dir, kind, bias):
    averages, _ = trained(model_dir, kind, only_in_train, bias)
    est = make_estimator(model_dir, kind, only_in_train, bias)
    np.testing.assert_allclose(predictions(est), DATA[0] @ averages[0] + averages[1],
                               atol=1e-5)
    np.testing.assert_allclose(est.evaluate(eval_input_fn)["loss"], numpy_loss(*averages),
                               rtol=1e-5)


def test_evaluate_with_both_of_a_variable_trainable_only_in_train(model_dir):
    averages, raw = trained(model_dir, "ema", only_in_train)
    metrics = make_estimator(model_dir, "ema", only_in_train,
                             evaluate_with="both").evaluate(eval_input_fn)
    np.testing.assert_allclose(metrics["loss"], numpy_loss(*averages), rtol=1e-5)
    np.testing.assert_allclose(metrics["raw_weights/loss"], numpy_loss(*raw), rtol=1e-5)


def supervised_input_receiver_fn():
    return tf.estimator.experimental.build_raw_supervised_input_receiver_fn(
        tf1.placeholder(tf.float32, [None, FEATURES], name="x"),
        tf1.placeholder(tf.float32, [None, 1], name="y"))()


@pytest.mark.parametrize("mode", [tf.estimator.ModeKeys.PREDICT, tf.estimator.ModeKeys.EVAL])
def test_export_of_a_variable_trainable_only_in_train_holds_its_average(tmp_path, mode):
    model_dir = tmp_path / "model"
    averages, _ = trained(model_dir, "ema", only_in_train)
    est = make_estimator(model_dir, "ema", only_in_train)
    receiver_fn = {tf.estimator.ModeKeys.PREDICT: serving_input_receiver_fn,
                   tf.estimator.ModeKeys.EVAL: supervised_input_receiver_fn}[mode]
    export_dir = est.export_saved_model(str(tmp_path / "export"), receiver_fn,
                                        experimental_mode=mode)
    variables = export_dir.decode() + "/variables/variables"
    np.testing.assert_allclose(load(variables, "kernel"), averages[0], atol=1e-5)
    np.testing.assert_allclose(load(variables, "bias"), averages[1], atol=1e-5)
    if mode == tf.estimator.ModeKeys.PREDICT:
        np.testing.assert_allclose(serve(export_dir, DATA[0], "loader.load"),
                                   DATA[0] @ averages[0] + averages[1], atol=1e-5)


def test_a_variable_trainable_only_outside_train_is_refused_naming_the_cause(model_dir):
    make_estimator(model_dir, "ema", only_outside_train).train(input_fn, steps=3)
    checkpoint = tf.train.latest_checkpoint(str(model_dir))
    est = make_estimator(model_dir, "ema", only_outside_train)
    for mode, run in [("EVAL", lambda: est.evaluate(eval_input_fn)),
                      ("PREDICT", lambda: predictions(est))]:
        with pytest.raises(ValueError, match=(
                r"^Checkpoint '%s' has no average of \['kernel'\], which this model's %s "
                r"graph selects for averaging: training did not average it \(its TRAIN "
                r"graph did not select it; a variable trainable only outside TRAIN, say\)\. "
                r"Select it in TRAIN too \(make it trainable there\), or in no mode "
                r"\(exclude=\), or use the raw weights \(evaluate_with='weights'\)\.$"
                % (re.escape(checkpoint), mode))):
            run()
    # The way out the message gives: excluded, it is restored as trained.
    est = make_estimator(model_dir, "ema", only_outside_train, exclude="kernel")
    np.testing.assert_allclose(predictions(est), DATA[0] @ load(model_dir, "kernel")
                               + load(model_dir, "bias/" + EMA), atol=1e-6)
