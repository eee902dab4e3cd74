"""averaged_estimator: evaluate and predict with the hook's averages, for v1, v2 and
canned Estimators, from any checkpoint."""

import os

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (DATA, EMA, FEATURES, estimator, input_fn, linear_model_fn, load,
                      run_config, tf1, trained_with_hook)

ESTIMATOR_CLASSES = {"v2": tf.estimator.Estimator, "v1": tf1.estimator.Estimator}


def _numpy_predictions(checkpoint, suffix):
    w = load(checkpoint, "linear/w" + suffix)
    b = load(checkpoint, "linear/b" + suffix)
    return DATA[0] @ w + b


def _predict_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA[0]).batch(8)


def _predict(est, **kwargs):
    return np.concatenate([p["y"][None] for p in est.predict(_predict_input_fn, **kwargs)])


def _eval_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA).batch(32)


def _mse(predictions):
    return np.mean((predictions - DATA[1]) ** 2)


@pytest.fixture(params=sorted(ESTIMATOR_CLASSES))
def trained(request, model_dir):
    """The linear model as a v1 or a v2 Estimator, trained 10 steps with the hook."""
    est = ESTIMATOR_CLASSES[request.param](linear_model_fn, str(model_dir), config=run_config(),
                                           params={"optimizer": "v1"})
    est.train(input_fn, steps=10, hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)])
    return est


def test_evaluate_uses_the_averages(trained, model_dir):
    averaged = estimator_ema.averaged_estimator(trained)
    expected = _mse(_numpy_predictions(model_dir, "/" + EMA))
    raw = _mse(_numpy_predictions(model_dir, ""))
    assert abs(expected - raw) > 1e-3
    np.testing.assert_allclose(averaged.evaluate(_eval_input_fn)["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(trained.evaluate(_eval_input_fn)["loss"], raw, rtol=1e-5)


def test_predict_uses_the_averages(trained, model_dir):
    got = _predict(estimator_ema.averaged_estimator(trained))
    np.testing.assert_allclose(got, _numpy_predictions(model_dir, "/" + EMA), atol=1e-5)


def _numeric_input_fn():
    return tf.data.Dataset.from_tensor_slices(({"x": DATA[0]}, DATA[1])).batch(8).repeat()


def _numeric_predict_input_fn():
    return tf.data.Dataset.from_tensor_slices({"x": DATA[0]}).batch(8)


def _canned_predictions(est):
    return np.concatenate([p["predictions"][None] for p in est.predict(_numeric_predict_input_fn)])


def _canned(kind, model_dir):
    optimizer = lambda: tf1.train.GradientDescentOptimizer(0.1)  # noqa: E731
    if kind == "BaselineRegressor":
        return tf1.estimator.BaselineRegressor(model_dir=str(model_dir), optimizer=optimizer,
                                               config=run_config())
    return tf1.estimator.LinearRegressor([tf.feature_column.numeric_column("x", [FEATURES])],
                                         model_dir=str(model_dir), optimizer=optimizer,
                                         config=run_config())


def _canned_numpy_predictions(kind, values):
    if kind == "BaselineRegressor":
        return np.tile(values["baseline/bias"], (len(DATA[0]), 1))
    return (DATA[0] @ values["linear/linear_model/x/weights"]
            + values["linear/linear_model/bias_weights"])


@pytest.mark.parametrize("kind", ["BaselineRegressor", "LinearRegressor"])
def test_v1_canned_estimator(model_dir, tmp_path, kind):
    est = _canned(kind, model_dir)
    est.train(_numeric_input_fn, steps=10,
              hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)])
    averages = estimator_ema.read_averages(str(model_dir))
    if kind == "LinearRegressor" and "linear/linear_model/x/weights" not in averages:
        pytest.skip("this hook names a partitioned variable's average after its part "
                    "(%s), not after the full variable" % sorted(averages))
    raw = {name: load(model_dir, name) for name in averages}
    expected = _canned_numpy_predictions(kind, averages)
    assert not np.allclose(expected, _canned_numpy_predictions(kind, raw), atol=1e-4)
    averaged = estimator_ema.averaged_estimator(est)
    np.testing.assert_allclose(_canned_predictions(averaged), expected, atol=1e-5)
    np.testing.assert_allclose(
        averaged.evaluate(lambda: _numeric_input_fn().take(4))["average_loss"],
        _mse(expected), rtol=1e-5)
    np.testing.assert_allclose(_canned_predictions(est),
                               _canned_numpy_predictions(kind, raw), atol=1e-5)


def _adam_model_fn(features, labels, mode):
    """The linear model with Adam built in EVAL mode too (and so its slots)."""
    w = tf1.get_variable("linear/w", [FEATURES, 1], initializer=tf1.zeros_initializer())
    b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer())
    predictions = tf.matmul(features, w) + b
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf.reduce_mean(tf.square(predictions - labels))
    train_op = tf1.train.AdamOptimizer(0.1).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def test_evaluate_a_model_fn_that_builds_its_optimizer_in_eval_mode(model_dir):
    est = tf.estimator.Estimator(_adam_model_fn, str(model_dir), config=run_config())
    est.train(input_fn, steps=5, hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)])
    loss = estimator_ema.averaged_estimator(est).evaluate(_eval_input_fn)["loss"]
    np.testing.assert_allclose(loss, _mse(_numpy_predictions(model_dir, "/" + EMA)), rtol=1e-5)


def _partitioned_stock_ema_model_fn(features, labels, mode):
    """`linear/w` in two parts, averaged by stock `ExponentialMovingAverage.apply`,
    which saves a part's average as a slice of `linear/w/ExponentialMovingAverage`."""
    w = tf1.get_variable("linear/w", [FEATURES, 1], initializer=tf1.zeros_initializer(),
                         partitioner=tf1.fixed_size_partitioner(2))
    predictions = tf.matmul(features, tf.concat(list(w), axis=0))
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf.reduce_mean(tf.square(predictions - labels))
    global_step = tf1.train.get_or_create_global_step()
    train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=global_step)
    with tf.control_dependencies([train_op]):
        train_op = tf1.train.ExponentialMovingAverage(0.8).apply(list(w))
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def test_partitioned_variables_read_their_slice_of_the_average(model_dir):
    est = tf.estimator.Estimator(_partitioned_stock_ema_model_fn, str(model_dir),
                                 config=run_config())
    est.train(input_fn, steps=5)
    assert load(model_dir, "linear/w/" + EMA).shape == (FEATURES, 1)
    expected = DATA[0] @ load(model_dir, "linear/w/" + EMA)
    assert not np.allclose(expected, DATA[0] @ load(model_dir, "linear/w"), atol=1e-4)
    np.testing.assert_allclose(_predict(estimator_ema.averaged_estimator(est)), expected,
                               atol=1e-5)


def test_checkpoint_path_of_another_model_dir(hook_trained, model_dir, tmp_path):
    trained_with_hook(model_dir, steps=5)
    older = os.path.join(str(model_dir), "model.ckpt-10")
    fresh = estimator_ema.averaged_estimator(estimator(tmp_path / "fresh"))
    expected = _numpy_predictions(older, "/" + EMA)
    assert not np.allclose(expected, _numpy_predictions(str(model_dir), "/" + EMA))
    np.testing.assert_allclose(_predict(fresh, checkpoint_path=older), expected, atol=1e-5)
    np.testing.assert_allclose(fresh.evaluate(_eval_input_fn, checkpoint_path=older)["loss"],
                               _mse(expected), rtol=1e-5)


def test_predict_without_any_checkpoint(tmp_path):
    fresh = estimator_ema.averaged_estimator(estimator(tmp_path / "fresh"))
    with pytest.raises(ValueError, match=r"averaged_estimator\(\) found no checkpoint to take "
                                         r"the averages from: 'estimator.model_dir' has none "
                                         r"\(got '.*fresh'\); pass 'checkpoint_path'\."):
        _predict(fresh)


def test_train_is_refused(hook_trained):
    with pytest.raises(ValueError, match=r"averaged_estimator\(\) is for evaluate, predict "
                                         r"and export; train the original estimator\."):
        estimator_ema.averaged_estimator(hook_trained).train(input_fn, steps=1)


def test_checkpoint_without_averages(model_dir):
    est = estimator(model_dir)
    est.train(input_fn, steps=1)
    with pytest.raises(ValueError, match=r"has no averages named 'ExponentialMovingAverage' "
                                         r"for this model's variables\."):
        estimator_ema.averaged_estimator(est).evaluate(_eval_input_fn)


def _wider_model_fn(features, labels, mode, params):
    tf1.get_variable("extra", [2])
    return linear_model_fn(features, labels, mode, params)


def test_variable_missing_from_the_checkpoint(hook_trained, model_dir):
    wider = estimator(model_dir, model_fn=_wider_model_fn)
    with pytest.raises(ValueError, match=r"Checkpoint '.*model.ckpt-10' has no value for "
                                         r"variable\(s\) \['extra'\]\."):
        _predict(estimator_ema.averaged_estimator(wider))


def _narrower_model_fn(features, labels, mode, params):
    w = tf1.get_variable("linear/w", [2, 1])
    return tf.estimator.EstimatorSpec(mode, predictions={"y": tf.matmul(features[:, :2], w)})


def test_variable_of_another_shape(hook_trained, model_dir):
    narrower = estimator(model_dir, model_fn=_narrower_model_fn)
    with pytest.raises(ValueError, match=r"Checkpoint '.*model.ckpt-10' holds "
                                         r"linear/w/ExponentialMovingAverage with shape \[3, 1\], "
                                         r"but variable linear/w has shape \[2, 1\]\."):
        _predict(estimator_ema.averaged_estimator(narrower))


def test_not_an_estimator():
    with pytest.raises(TypeError, match=r"'estimator' must be a tf.estimator.Estimator or a "
                                        r"tf.compat.v1.estimator.Estimator \(got 'dir'\)\."):
        estimator_ema.averaged_estimator("dir")
