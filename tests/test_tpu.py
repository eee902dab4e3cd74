"""TPUEstimator (use_tpu=False, on the CPU) with the decorators and the hook: a
model_fn returning a TPUEstimatorSpec (scaffold_fn, eval_metrics), EfficientNet
style."""

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (BATCH, DATA, EMA, SWA, LEARNING_RATE, ema_oracle, load, sgd_weights,
                      swa_oracle, tf1)

tpu = tf1.estimator.tpu


def tpu_input_fn(params):
    """The conftest input_fn's batches, sized by TPUEstimator's params['batch_size']."""
    return tf.data.Dataset.from_tensor_slices(DATA).batch(
        params["batch_size"], drop_remainder=True).repeat()


def eval_input_fn(params):
    return tf.data.Dataset.from_tensor_slices(DATA).batch(params["batch_size"])


def predict_input_fn(params):
    return tf.data.Dataset.from_tensor_slices(DATA[0]).batch(params["batch_size"])


def serving_input_fn():
    x = tf1.placeholder(tf.float32, [None, 3], name="x")
    return tf.estimator.export.ServingInputReceiver({"x": x}, {"x": x})


def metric_fn(labels, predictions):
    return {"mse": tf1.metrics.mean_squared_error(labels, predictions)}


def tpu_model_fn(features, labels, mode, params):
    """The conftest linear model as TPU code writes it: a TPUEstimatorSpec with
    eval_metrics and, with params['scaffold_fn'], a scaffold_fn."""
    if isinstance(features, dict):
        features = features["x"]
    w = tf1.get_variable("linear/w", [3, 1], initializer=tf1.zeros_initializer())
    b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer())
    predictions = tf.matmul(features, w) + b
    scaffold_fn = params.get("scaffold_fn")
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tpu.TPUEstimatorSpec(mode, predictions={"y": predictions}, scaffold_fn=scaffold_fn)
    loss = tf.reduce_mean(tf.square(predictions - labels))
    optimizer = tf1.train.GradientDescentOptimizer(LEARNING_RATE)
    if params["use_tpu"]:  # pragma: no cover - no TPU here
        optimizer = tf1.tpu.CrossShardOptimizer(optimizer)
    train_op = optimizer.minimize(loss, global_step=tf1.train.get_or_create_global_step())
    return tpu.TPUEstimatorSpec(mode, loss=loss, train_op=train_op,
                                eval_metrics=(metric_fn, [labels, predictions]),
                                scaffold_fn=scaffold_fn)


def tpu_estimator(model_dir, model_fn, params=None):
    config = tpu.RunConfig(model_dir=str(model_dir), tf_random_seed=0, save_summary_steps=1000,
                           log_step_count_steps=1000)
    return tpu.TPUEstimator(model_fn=model_fn, config=config, params=params, use_tpu=False,
                            train_batch_size=BATCH, eval_batch_size=len(DATA[0]),
                            predict_batch_size=BATCH, export_to_tpu=False)


def numpy_predictions(w, b):
    return DATA[0] @ w + b


def averages(model_dir, name=EMA):
    return load(model_dir, "linear/w/" + name), load(model_dir, "linear/b/" + name)


def weights(model_dir):
    return load(model_dir, "linear/w"), load(model_dir, "linear/b")


def assert_close(actual, expected):
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=1e-5)


@pytest.fixture
def trained(model_dir):
    est = tpu_estimator(model_dir, estimator_ema.with_ema(tpu_model_fn, decay=0.8))
    est.train(tpu_input_fn, steps=10)
    return est


def test_training_matches_numpy_oracle(trained, model_dir):
    trajectory = sgd_weights(10)
    assert_close(weights(model_dir), trajectory[-1])
    assert_close(averages(model_dir), ema_oracle(trajectory, 0.8))


def test_swa_matches_numpy_oracle(model_dir):
    est = tpu_estimator(model_dir, estimator_ema.with_swa(tpu_model_fn, start_step=2,
                                                         average_period=3))
    est.train(tpu_input_fn, steps=9)
    expected, count = swa_oracle(sgd_weights(9), 2, 3)
    assert_close(averages(model_dir, SWA), expected)
    assert load(model_dir, SWA + "/count") == count


def test_evaluate_predict_and_export_use_the_averages(trained, model_dir, tmp_path):
    averaged = averages(model_dir)
    assert not np.allclose(averaged[0], weights(model_dir)[0], atol=1e-3)
    expected = numpy_predictions(*averaged)
    metrics = trained.evaluate(eval_input_fn, steps=1)
    np.testing.assert_allclose(metrics["mse"], np.mean((expected - DATA[1]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], metrics["mse"], rtol=1e-5)
    predicted = np.stack([p["y"] for p in trained.predict(predict_input_fn)])
    np.testing.assert_allclose(predicted, expected, atol=1e-5)

    export_dir = trained.export_saved_model(str(tmp_path / "export"), serving_input_fn)
    variables = export_dir.decode() + "/variables/variables"
    assert {n for n, _ in tf.train.list_variables(variables)} == {
        "linear/w", "linear/b", "global_step"}
    assert_close((load(variables, "linear/w"), load(variables, "linear/b")), averaged)
    with tf.Graph().as_default(), tf1.Session() as session:
        meta = tf1.saved_model.loader.load(session, ["serve"], export_dir.decode())
        signature = meta.signature_def["serving_default"]
        served = session.run(signature.outputs["y"].name,
                             {signature.inputs["x"].name: DATA[0]})
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_evaluate_with_weights_uses_the_raw_weights(trained, model_dir):
    est = tpu_estimator(model_dir, estimator_ema.with_ema(tpu_model_fn, decay=0.8,
                                                         evaluate_with="weights"))
    expected = numpy_predictions(*weights(model_dir))
    metrics = est.evaluate(eval_input_fn, steps=1)
    np.testing.assert_allclose(metrics["mse"], np.mean((expected - DATA[1]) ** 2), rtol=1e-5)


def test_the_model_fns_scaffold_fn_is_kept(model_dir):
    """Its Scaffold's init_fn runs when training starts from scratch, before the
    averages are set from the weights it initialized."""
    def scaffold_fn():
        w, = [v for v in tf1.global_variables() if v.op.name == "linear/w"]
        return tf1.train.Scaffold(
            init_fn=lambda scaffold, session: w.load(np.ones((3, 1)), session))

    est = tpu_estimator(model_dir, estimator_ema.with_ema(tpu_model_fn, decay=0.8),
                        params={"scaffold_fn": scaffold_fn})
    est.train(tpu_input_fn, steps=3)
    trajectory = sgd_weights(3, w=np.ones((3, 1)))
    assert_close(weights(model_dir), trajectory[-1])
    assert_close(averages(model_dir), ema_oracle(trajectory, 0.8))


def test_a_scaffold_fn_with_its_own_saver_is_refused(model_dir):
    def scaffold_fn():
        return tf1.train.Scaffold(saver=tf1.train.Saver(tf1.trainable_variables()))

    est = tpu_estimator(model_dir, estimator_ema.with_ema(tpu_model_fn),
                        params={"scaffold_fn": scaffold_fn})
    with pytest.raises(ValueError, match=r"The model_fn's Scaffold has its own Saver"):
        est.train(tpu_input_fn, steps=1)


def test_evaluate_with_both_is_refused(trained, model_dir):
    est = tpu_estimator(model_dir, estimator_ema.with_ema(tpu_model_fn, evaluate_with="both"))
    with pytest.raises(ValueError, match=r"evaluate_with='both' needs an EstimatorSpec's "
                                         r"eval_metric_ops \(got a TPUEstimatorSpec\); use "
                                         r"evaluate_with='averages' or 'weights'\."):
        est.evaluate(eval_input_fn, steps=1)


def test_the_hook_on_a_tpu_estimator(model_dir):
    est = tpu_estimator(model_dir, tpu_model_fn)
    est.train(tpu_input_fn, steps=10,
              hooks=[estimator_ema.ExponentialMovingAverageHook(0.8)])
    trajectory = sgd_weights(10)
    assert_close(weights(model_dir), trajectory[-1])
    assert_close(averages(model_dir), ema_oracle(trajectory, 0.8))


def test_a_tpu_estimator_instance_is_refused(model_dir):
    est = tpu_estimator(model_dir, tpu_model_fn)
    with pytest.raises(TypeError, match=r"'model_fn' cannot be a TPUEstimator \(got .*\): "
                                        r"TPUEstimator wraps its model_fn for the TPU; decorate "
                                        r"the model_fn you give it instead, "
                                        r"TPUEstimator\(model_fn=with_swa\(model_fn\), \.\.\.\)\."):
        estimator_ema.with_swa(est, start_step=1)
