"""Stochastic weight averaging: hook and decorator through Estimator, against numpy."""

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (DATA, estimator, input_fn, linear_model_fn, load, sgd_weights,
                      summary_tags, swa_oracle, tf1)

SWA = "StochasticWeightAverage"
COUNT = SWA + "/count"


def train(model_dir, how, steps, start_step, average_period=1, optimizer="v1", **kwargs):
    """Trains the linear model with the SWA hook or the SWA decorator."""
    options = dict(start_step=start_step, average_period=average_period, **kwargs)
    if how == "hook":
        est = estimator(model_dir, optimizer)
        est.train(input_fn, steps=steps,
                  hooks=[estimator_ema.StochasticWeightAveragingHook(**options)])
    else:
        est = estimator(model_dir, optimizer,
                        model_fn=estimator_ema.with_swa(linear_model_fn, **options))
        est.train(input_fn, steps=steps)
    return est


def averages(model_dir, name=SWA):
    return load(model_dir, "linear/w/" + name), load(model_dir, "linear/b/" + name)


def weights(model_dir):
    return load(model_dir, "linear/w"), load(model_dir, "linear/b")


def assert_swa(model_dir, expected):
    (w, b), count = expected
    np.testing.assert_allclose(averages(model_dir)[0], w, atol=1e-5)
    np.testing.assert_allclose(averages(model_dir)[1], b, atol=1e-5)
    assert load(model_dir, COUNT) == count


def numpy_predictions(w, b):
    return DATA[0] @ w + b


def numpy_loss(w, b):
    return np.mean((numpy_predictions(w, b) - DATA[1]) ** 2)


def eval_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA).batch(32)


def predict(est):
    def predict_input_fn():
        return tf.data.Dataset.from_tensor_slices(DATA[0]).batch(8)
    return np.concatenate([p["y"][None] for p in est.predict(predict_input_fn)])


SCHEDULES = [(0, 1), (0, 3), (1, 1), (5, 1), (4, 3), (3, 5), (12, 1), (13, 1), (20, 4)]
SCHEDULE_IDS = ["start%d-every%d" % s for s in SCHEDULES]


@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("start_step, average_period", SCHEDULES, ids=SCHEDULE_IDS)
def test_mean_matches_numpy_oracle(model_dir, how, start_step, average_period):
    train(model_dir, how, 12, start_step, average_period)
    trajectory = sgd_weights(12)
    np.testing.assert_allclose(weights(model_dir)[0], trajectory[-1][0], atol=1e-5)
    assert_swa(model_dir, swa_oracle(trajectory, start_step, average_period))


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_keras_optimizer(model_dir, how):
    # Keras optimizers leave TRAIN_OP empty; the update still joins the step.
    train(model_dir, how, 10, 3, 2, optimizer="keras")
    assert_swa(model_dir, swa_oracle(sgd_weights(10), 3, 2))


@pytest.mark.parametrize("start_step, average_period", [(2, 3), (6, 1), (0, 2)],
                         ids=["start2-every3", "start6-every1", "start0-every2"])
def test_hook_and_decorator_agree(tmp_path, start_step, average_period):
    train(tmp_path / "hook", "hook", 11, start_step, average_period)
    train(tmp_path / "dec", "decorator", 11, start_step, average_period)
    for a, b in zip(averages(tmp_path / "hook"), averages(tmp_path / "dec")):
        np.testing.assert_array_equal(a, b)
    assert load(tmp_path / "hook", COUNT) == load(tmp_path / "dec", COUNT)


@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("split", [(4, 8), (8, 4), (4, 4, 4)], ids=["4+8", "8+4", "4+4+4"])
def test_resume_continues_the_same_mean(tmp_path, how, split):
    train(tmp_path / "one", how, 12, 6, 2)
    for steps in split:
        # Each train() call restarts input_fn; 4 steps is a whole pass over the
        # data, so the split runs see the same batches as the single run.
        train(tmp_path / "two", how, steps, 6, 2)
    expected = swa_oracle(sgd_weights(12), 6, 2)
    assert_swa(tmp_path / "one", expected)
    assert_swa(tmp_path / "two", expected)


@pytest.fixture
def decorated(model_dir):
    est = train(model_dir, "decorator", 12, 4, 2)
    assert abs(numpy_loss(*weights(model_dir)) - numpy_loss(*averages(model_dir))) > 1e-3
    return est


def test_decorator_evaluates_and_predicts_with_the_swa_weights(decorated, model_dir):
    np.testing.assert_allclose(decorated.evaluate(eval_input_fn)["loss"],
                               numpy_loss(*averages(model_dir)), rtol=1e-5)
    np.testing.assert_allclose(predict(decorated), numpy_predictions(*averages(model_dir)),
                               atol=1e-5)


def test_decorator_evaluate_with_both(model_dir, decorated):
    model_fn = estimator_ema.with_swa(linear_model_fn, start_step=4, average_period=2,
                                      evaluate_with="both")
    metrics = estimator(model_dir, model_fn=model_fn).evaluate(eval_input_fn)
    np.testing.assert_allclose(metrics["loss"], numpy_loss(*averages(model_dir)), rtol=1e-5)
    np.testing.assert_allclose(metrics["raw_weights/loss"], numpy_loss(*weights(model_dir)),
                               rtol=1e-5)


def test_evaluating_before_start_step_uses_the_current_weights(model_dir):
    est = train(model_dir, "decorator", 5, 8)
    assert load(model_dir, COUNT) == 0
    np.testing.assert_array_equal(averages(model_dir)[0], weights(model_dir)[0])
    np.testing.assert_allclose(est.evaluate(eval_input_fn)["loss"],
                               numpy_loss(*sgd_weights(5)[-1]), rtol=1e-5)


def test_averaged_estimator_with_the_swa_name(model_dir):
    est = train(model_dir, "hook", 12, 4, 2)
    averaged = estimator_ema.averaged_estimator(est, name=SWA)
    expected = numpy_loss(*averages(model_dir))
    assert abs(expected - numpy_loss(*weights(model_dir))) > 1e-3
    np.testing.assert_allclose(averaged.evaluate(eval_input_fn)["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(predict(averaged), numpy_predictions(*averages(model_dir)),
                               atol=1e-5)


def test_stock_ema_restore_map_reads_the_swa_averages(model_dir):
    train(model_dir, "hook", 6, 2)
    with tf.Graph().as_default():
        w = tf1.get_variable("linear/w", [3, 1])
        stock = tf1.train.ExponentialMovingAverage(0.0, name=SWA)
        saver = tf1.train.Saver(stock.variables_to_restore([w]))
        with tf1.Session() as session:
            saver.restore(session, tf.train.latest_checkpoint(str(model_dir)))
            np.testing.assert_array_equal(session.run(w), averages(model_dir)[0])


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_averages_start_from_warm_started_weights_and_count_from_zero(tmp_path, how):
    source, target = tmp_path / "source", tmp_path / "target"
    train(source, "decorator", 5, 1)
    assert load(source, COUNT) == 5
    warm_from = weights(source)
    # A list of scopes warm-starts every matching global variable, the SWA
    # shadows and count included: the decorator must start them afresh.
    settings = tf.estimator.WarmStartSettings(str(source), vars_to_warm_start=["linear", SWA])
    options = dict(start_step=2, average_period=2)
    if how == "hook":
        est = estimator(target, warm_start_from=settings)
        est.train(input_fn, steps=6, hooks=[estimator_ema.StochasticWeightAveragingHook(**options)])
    else:
        est = estimator(target, warm_start_from=settings,
                        model_fn=estimator_ema.with_swa(linear_model_fn, **options))
        est.train(input_fn, steps=6)
    # The new run's global step starts at 0, so batches start from the first.
    trajectory = sgd_weights(6, *warm_from)
    np.testing.assert_allclose(weights(target)[0], trajectory[-1][0], atol=1e-5)
    assert_swa(target, swa_oracle(trajectory, 2, 2))


def test_start_step_zero_includes_the_warm_started_weights(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    train(source, "hook", 3, 1)
    model_fn = estimator_ema.with_swa(linear_model_fn, start_step=0)
    estimator(target, model_fn=model_fn, warm_start_from=str(source)).train(input_fn, steps=2)
    trajectory = sgd_weights(2, *weights(source))
    assert_swa(target, swa_oracle(trajectory, 0))
    assert load(target, COUNT) == 3


def test_summaries_written(model_dir):
    tags = summary_tags(model_dir, estimator_ema.StochasticWeightAveragingHook(1))
    assert {SWA + "/num_entries", SWA + "/distance", SWA + "/relative_distance"} <= tags


def test_custom_name_and_include(model_dir):
    train(model_dir, "hook", 8, 2, include="b$", name="Swa2")
    names = {n for n, _ in tf.train.list_variables(str(model_dir))}
    assert {"linear/b/Swa2", "Swa2/count"} <= names
    assert not [n for n in names if n.startswith("linear/w/")]
    (_, b), count = swa_oracle(sgd_weights(8), 2)
    np.testing.assert_allclose(load(model_dir, "linear/b/Swa2"), b, atol=1e-5)
    assert load(model_dir, "Swa2/count") == count


def test_ema_and_swa_together(model_dir):
    hooks = [estimator_ema.ExponentialMovingAverageHook(0.5),
             estimator_ema.StochasticWeightAveragingHook(3)]
    estimator(model_dir).train(input_fn, steps=6, hooks=hooks)
    assert_swa(model_dir, swa_oracle(sgd_weights(6), 3))
    names = {n for n, _ in tf.train.list_variables(str(model_dir))}
    assert "linear/w/ExponentialMovingAverage" in names
    assert "linear/w/ExponentialMovingAverage/" + SWA not in names


BAD_ARGUMENTS = [
    ({"start_step": -1}, ValueError, r"'start_step' must be a non-negative int \(got -1\)\."),
    ({"start_step": 2.0}, TypeError, r"'start_step' must be a non-negative int \(got 2.0\)\."),
    ({"start_step": True}, TypeError, r"'start_step' must be a non-negative int \(got True\)\."),
    ({"start_step": "5"}, TypeError, r"'start_step' must be a non-negative int \(got '5'\)\."),
    ({"start_step": None}, TypeError, r"'start_step' must be a non-negative int \(got None\)\."),
    ({"start_step": 1, "average_period": 0}, ValueError,
     r"'average_period' must be a positive int \(got 0\)\."),
    ({"start_step": 1, "average_period": -3}, ValueError,
     r"'average_period' must be a positive int \(got -3\)\."),
    ({"start_step": 1, "average_period": 1.5}, TypeError,
     r"'average_period' must be a positive int \(got 1.5\)\."),
    ({"start_step": 1, "average_period": False}, TypeError,
     r"'average_period' must be a positive int \(got False\)\."),
    ({"start_step": 1, "name": "a b"}, ValueError,
     r"'name' must be a non-empty string .* \(got 'a b'\)\."),
    ({"start_step": 1, "exclude": 3}, TypeError,
     r"'exclude' must be a regex string or a list of them \(got 3\)\."),
]
BAD_IDS = ["start-negative", "start-float", "start-bool", "start-str", "start-none",
           "period-zero", "period-negative", "period-float", "period-bool", "name", "exclude"]


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGUMENTS, ids=BAD_IDS)
def test_hook_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        estimator_ema.StochasticWeightAveragingHook(**kwargs)


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGUMENTS + [
    ({"start_step": 1, "evaluate_with": "swa"}, ValueError,
     r"'evaluate_with' must be one of 'averages', 'weights', 'both' \(got 'swa'\)\."),
], ids=BAD_IDS + ["evaluate_with"])
def test_decorator_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        estimator_ema.with_swa(linear_model_fn, **kwargs)


def test_decorator_options_by_position_are_explained():
    with pytest.raises(TypeError, match=r"'model_fn' must be callable \(got 1000\); pass the "
                                        r"options by keyword, e.g. "
                                        r"@with_swa\(start_step=1000\)\."):
        estimator_ema.with_swa(1000, start_step=5)


def test_decorator_forms(tmp_path):
    @estimator_ema.with_swa(start_step=2)
    def called(features, labels, mode, params):
        return linear_model_fn(features, labels, mode, params)

    estimator(tmp_path, model_fn=called).train(input_fn, steps=5)
    assert_swa(tmp_path, swa_oracle(sgd_weights(5), 2))


def _begin_in_graph(hook, build):
    with tf.Graph().as_default():
        build()
        hook.begin()


def test_no_global_step_is_a_runtime_error():
    hook = estimator_ema.StochasticWeightAveragingHook(1)
    with pytest.raises(RuntimeError, match=r"Stochastic weight averages need a global step; "
                                           r"create one with "):
        _begin_in_graph(hook, lambda: tf1.get_variable("w", [1]))


def test_two_averages_with_one_name_conflict():
    with tf.Graph().as_default():
        tf1.train.get_or_create_global_step()
        tf1.get_variable("w", [1])
        tf1.get_variable("v", [1])
        estimator_ema.StochasticWeightAveragingHook(1, include="w").begin()
        with pytest.raises(RuntimeError, match=r"The graph already has an average named "
                                               r"'StochasticWeightAverage' \(variable "
                                               r"StochasticWeightAverage/count\); use another "
                                               r"'name'\."):
            estimator_ema.StochasticWeightAveragingHook(1, include="v").begin()
