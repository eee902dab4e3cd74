"""InMemoryEvaluatorHook: evaluating the averages during training, in memory.

Each in-memory evaluation must give the metrics of `evaluate()` of the
averages on a checkpoint written at the same step (bit for bit), and those of a numpy
oracle of the averages: for dense, partitioned and lazily averaged embedding
tables, with the hook (plain and averaged Estimator) and the decorator.
"""

import inspect
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (DATA, FEATURES, IS_TF1, SWA, ema_oracle, input_fn, linear_model_fn,
                      run_config, sgd_weights, swa_oracle, tf1)
import test_canned
import test_distributed
from test_lazy_rows import ROWS, embedding_model_fn, ids_input_fn, whole
from test_ordering import Recorder, ema_of
from test_partitioned import partitioned_model_fn
from test_trainable_in_one_mode import always, only_outside_train
from test_trainable_in_one_mode import model_fn as trainable_model_fn

DECAY = 0.8
STEPS = 6
EVERY = 2
EVAL = tf.estimator.ModeKeys.EVAL


def with_mae(model_fn):
    """`model_fn` with a mean-absolute-error metric in EVAL mode."""
    takes_params = "params" in inspect.signature(model_fn).parameters

    def metric_model_fn(features, labels, mode, params):
        spec = (model_fn(features, labels, mode, params) if takes_params
                else model_fn(features, labels, mode))
        if mode == EVAL:
            spec = spec._replace(eval_metric_ops={"mae": tf1.metrics.mean_absolute_error(
                labels, spec.predictions["y"])})
        return spec

    return metric_model_fn


def linear_loss(step, weights=None):
    """(loss, mae) of the linear model's averages after `step` over DATA."""
    w, b = weights if weights is not None else ema_oracle(sgd_weights(step), DECAY)
    error = DATA[0] @ w + b - DATA[1]
    return np.mean(error ** 2), np.mean(np.abs(error))


def ids_data(batches):
    """(ids, labels) of the first `batches` batches of `ids_input_fn`."""
    with tf.Graph().as_default():
        features, labels = tf1.data.make_one_shot_iterator(ids_input_fn()).get_next()
        with tf1.Session() as session:
            got = [session.run([features["ids"], labels]) for _ in range(batches)]
    return np.concatenate([g[0] for g in got]), np.concatenate([g[1] for g in got])


def embedding_loss(values, parts, batches=3):
    """(loss, mae) of the embedding model with `values` (a partitioned table's
    parts joined) over its first batches."""
    ids, labels = ids_data(batches)
    if parts and IS_TF1:  # TF 1's embedding_lookup puts id i in part i % parts
        ids = (ids % parts) * (ROWS // parts) + ids // parts
    error = values["embedding/table"][ids].mean(axis=1) @ values["head/w"] - labels
    return np.mean(error ** 2), np.mean(np.abs(error))


MODELS = {
    # model_fn, params, train input_fn, eval input_fn and steps
    "dense": (linear_model_fn, {"optimizer": "v1"}, input_fn, input_fn, 4),
    "partitioned": (partitioned_model_fn, None, input_fn, input_fn, 4),
    "lazy": (embedding_model_fn, {"optimizer": "sgd", "parts": 0}, ids_input_fn,
             ids_input_fn, 3),
    "lazy_partitioned": (embedding_model_fn, {"optimizer": "adagrad", "parts": 2},
                         ids_input_fn, ids_input_fn, 3),
}
HOW = ["hook", "hook_averaged_estimator", "decorator"]


def make_estimator(model_dir, model, how, **options):
    model_fn, params = MODELS[model][:2]
    model_fn = with_mae(model_fn)
    if how == "decorator":
        model_fn = estimator_ema.with_ema(model_fn, decay=DECAY, **options)
    config = run_config(save_checkpoints_steps=EVERY, keep_checkpoint_max=100)
    return tf.estimator.Estimator(model_fn, str(model_dir), config=config, params=params)


def train_with_evaluator(model_dir, model, how, steps=STEPS, **evaluator_kwargs):
    """Trains `model` with the evaluator every EVERY runs, a checkpoint every
    EVERY steps; returns (estimator, evaluator, recorder, evaluate of the averages)."""
    est = make_estimator(model_dir, model, how)
    _, _, train_input_fn, eval_input_fn, eval_steps = MODELS[model]
    hooks = []
    if how.startswith("hook"):
        hooks.append(estimator_ema.ExponentialMovingAverageHook(DECAY))
    evaluated = estimator_ema.averaged_estimator(est) if how == "hook_averaged_estimator" else est
    evaluator = estimator_ema.InMemoryEvaluatorHook(evaluated, eval_input_fn, steps=eval_steps,
                                                    every_n_iter=EVERY, **evaluator_kwargs)
    recorder = Recorder()
    est.train(train_input_fn, steps=steps, hooks=hooks + [evaluator, recorder])
    averaged = est if how == "decorator" else estimator_ema.averaged_estimator(est)

    def evaluate(step):
        return averaged.evaluate(eval_input_fn, steps=eval_steps, name="checkpoint",
                                 checkpoint_path=os.path.join(str(model_dir),
                                                              "model.ckpt-%d" % step))

    return est, evaluator, recorder, evaluate


def oracle(model, step, recorder):
    """(loss, mae) of the numpy averages after global step `step`."""
    if model in ("dense", "partitioned"):
        return linear_loss(step)
    record = [(s, whole(values)) for s, values in recorder.record]
    start, after = record[0][1], [r for r in record[1:] if r[0] <= step]
    averages = ema_of(after, DECAY, {k: start[k] for k in ("embedding/table", "head/w")})
    return embedding_loss(averages, MODELS[model][1]["parts"])


@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("model", sorted(MODELS))
def test_each_evaluation_equals_evaluate_of_that_steps_checkpoint(model_dir, model, how):
    est, evaluator, recorder, evaluate = train_with_evaluator(model_dir, model, how)
    results = evaluator.evaluations
    assert [r["global_step"] for r in results] == [0, 2, 4, 6]
    for result in results:
        step = result["global_step"]
        expected = evaluate(step)
        assert expected["global_step"] == step
        for metric in ("loss", "mae"):
            np.testing.assert_array_equal(result[metric], expected[metric],
                                       err_msg="%s at step %d" % (metric, step))
        np.testing.assert_allclose([result["loss"], result["mae"]],
                                   oracle(model, step, recorder), rtol=1e-5,
                                   err_msg="the oracle at step %d" % step)
    # Not vacuous: the raw weights evaluate otherwise.
    raw = tf.estimator.Estimator(with_mae(MODELS[model][0]), str(model_dir),
                                 params=MODELS[model][1]).evaluate(
        MODELS[model][3], steps=MODELS[model][4], name="raw")
    assert abs(raw["loss"] - results[-1]["loss"]) > 1e-4


def test_the_lazy_tables_are_averaged_lazily_in_the_run(model_dir, caplog):
    caplog.set_level("INFO", logger="estimator_ema")
    train_with_evaluator(model_dir, "lazy_partitioned", "hook", steps=2)
    assert "'embedding/table/part_0', 'embedding/table/part_1'] written only in rows, " \
           "averaged lazily" in caplog.text


def event_steps(directory, tag):
    steps = []
    for path in sorted(tf1.gfile.Glob(os.path.join(directory, "events.out.tfevents.*"))):
        for event in tf1.train.summary_iterator(path):
            steps.extend(event.step for value in event.summary.value if value.tag == tag)
    return steps


def test_summaries_go_to_the_named_eval_dir_and_the_end_is_evaluated_once(model_dir):
    # 5 runs, every 2: at the start, after runs 2 and 4, and at the end (step 5).
    _, evaluator, _, _ = train_with_evaluator(model_dir, "dense", "decorator", steps=5,
                                              name="averages")
    assert [r["global_step"] for r in evaluator.evaluations] == [0, 2, 4, 5]
    assert sorted(event_steps(str(model_dir / "eval_averages"), "loss")) == [0, 2, 4, 5]
    assert sorted(event_steps(str(model_dir / "eval_averages"), "mae")) == [0, 2, 4, 5]


def test_a_resumed_training_evaluates_the_restored_averages_first(model_dir):
    est, evaluator, _, evaluate = train_with_evaluator(model_dir, "dense", "hook", steps=4)
    again = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=4, every_n_iter=3)
    est.train(input_fn, steps=3, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY),
                                        again])
    assert [r["global_step"] for r in again.evaluations] == [4, 7]
    np.testing.assert_allclose(again.evaluations[0]["loss"], evaluate(4)["loss"], rtol=1e-6)
    np.testing.assert_allclose(again.evaluations[1]["loss"], linear_loss(7)[0], rtol=1e-5)


def test_swa_decorator_evaluates_its_own_averages(model_dir):
    est = tf.estimator.Estimator(
        estimator_ema.with_swa(with_mae(linear_model_fn), start_step=2), str(model_dir),
        config=run_config(), params={"optimizer": "v1"})
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=4, every_n_iter=3)
    est.train(input_fn, steps=6, hooks=[evaluator])
    assert [r["global_step"] for r in evaluator.evaluations] == [0, 3, 6]
    for result in evaluator.evaluations:
        averages, _ = swa_oracle(sgd_weights(result["global_step"]), 2)
        np.testing.assert_allclose(result["loss"], linear_loss(0, averages)[0], rtol=1e-5)
    np.testing.assert_allclose(evaluator.evaluations[-1]["loss"],
                               est.evaluate(input_fn, steps=4)["loss"], rtol=1e-6)


def test_evaluate_with_both_copies_the_raw_weights_beside_the_averages(model_dir):
    est = tf.estimator.Estimator(
        estimator_ema.with_ema(with_mae(linear_model_fn), decay=DECAY, evaluate_with="both"),
        str(model_dir), config=run_config(), params={"optimizer": "v1"})
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=4, every_n_iter=5)
    est.train(input_fn, steps=5, hooks=[evaluator])
    result = evaluator.evaluations[-1]
    expected = est.evaluate(input_fn, steps=4)
    for metric in ("loss", "mae", "raw_weights/loss", "raw_weights/mae"):
        np.testing.assert_allclose(result[metric], expected[metric], rtol=1e-6)
    np.testing.assert_allclose(result["raw_weights/loss"],
                               linear_loss(0, sgd_weights(5)[-1])[0], rtol=1e-5)
    np.testing.assert_allclose(result["loss"], linear_loss(5)[0], rtol=1e-5)


def repartitioned_model_fn(features, labels, mode):
    """The linear model with `linear/w` in two parts in TRAIN, three elsewhere."""
    parts = 2 if mode == tf.estimator.ModeKeys.TRAIN else 3
    w = tf1.get_variable("linear/w", [FEATURES, 1], initializer=tf1.zeros_initializer(),
                         partitioner=tf1.fixed_size_partitioner(parts))
    b = tf1.get_variable("linear/b", [1], initializer=tf1.zeros_initializer())
    predictions = tf.matmul(features, tf.concat(list(w), 0)) + b
    loss = tf.reduce_mean(tf.square(predictions - labels))
    train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_a_variable_partitioned_otherwise_in_eval_gets_its_slices(model_dir, how):
    model_fn, hooks = repartitioned_model_fn, []
    if how == "decorator":
        model_fn = estimator_ema.with_ema(model_fn, decay=DECAY)
    else:
        hooks.append(estimator_ema.ExponentialMovingAverageHook(DECAY))
    est = tf.estimator.Estimator(model_fn, str(model_dir), config=run_config())
    evaluated = est if how == "decorator" else estimator_ema.averaged_estimator(est)
    evaluator = estimator_ema.InMemoryEvaluatorHook(evaluated, input_fn, steps=4,
                                                    every_n_iter=5)
    est.train(input_fn, steps=5, hooks=hooks + [evaluator])
    np.testing.assert_array_equal(evaluator.evaluations[-1]["loss"],
                                  evaluated.evaluate(input_fn, steps=4)["loss"])
    np.testing.assert_allclose(evaluator.evaluations[-1]["loss"], linear_loss(5)[0], rtol=1e-5)


@pytest.mark.parametrize("kind", ["v1", "v2"])
def test_v1_and_v2_estimators(model_dir, kind):
    module = tf1.estimator if kind == "v1" else tf.estimator
    est = module.Estimator(linear_model_fn, str(model_dir), config=run_config(),
                           params={"optimizer": "v1"})
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=4, every_n_iter=3)
    est.train(input_fn, steps=3, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY),
                                        evaluator])
    np.testing.assert_allclose(evaluator.evaluations[-1]["loss"], linear_loss(3)[0], rtol=1e-5)


@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("kind, flavour", test_canned.CASES)
def test_canned_estimators(model_dir, kind, flavour, how):
    """Every metric of a canned classifier (accuracy, AUC, ...) as evaluate() gives it."""
    est = test_canned.canned(kind, flavour, model_dir)
    hooks = []
    if how == "decorator":
        est = estimator_ema.with_ema(est, decay=DECAY)
        evaluated = est
    else:
        hooks.append(estimator_ema.ExponentialMovingAverageHook(DECAY))
        evaluated = estimator_ema.averaged_estimator(est)
    evaluator = estimator_ema.InMemoryEvaluatorHook(evaluated, test_canned.input_fn, steps=4,
                                                    every_n_iter=3)
    est.train(test_canned.input_fn, steps=6, hooks=hooks + [evaluator])
    assert [r["global_step"] for r in evaluator.evaluations] == [0, 3, 6]
    for result in evaluator.evaluations:
        expected = evaluated.evaluate(
            test_canned.input_fn, steps=4, name="checkpoint",
            checkpoint_path=os.path.join(str(model_dir), "model.ckpt-%d" % result["global_step"]))
        assert sorted(result) == sorted(expected)
        for metric in expected:
            np.testing.assert_array_equal(result[metric], expected[metric], err_msg=metric)


def test_a_keras_model_with_batch_norm(model_dir):
    est = test_canned.keras_bn_estimator(
        model_dir, **({} if IS_TF1 else {"checkpoint_format": "saver"}))
    decorated = estimator_ema.with_ema(est, decay=DECAY)
    evaluator = estimator_ema.InMemoryEvaluatorHook(decorated, input_fn, steps=4,
                                                    every_n_iter=3)
    decorated.train(input_fn, steps=6, hooks=[evaluator])
    for result in evaluator.evaluations:
        expected = decorated.evaluate(
            input_fn, steps=4, name="checkpoint",
            checkpoint_path=os.path.join(str(model_dir), "model.ckpt-%d" % result["global_step"]))
        np.testing.assert_array_equal(result["loss"], expected["loss"])
    raw = est.evaluate(input_fn, steps=4, name="raw")
    assert abs(raw["loss"] - evaluator.evaluations[-1]["loss"]) > 1e-4


def test_evaluate_with_weights_still_gets_the_averages(model_dir):
    est = tf.estimator.Estimator(
        estimator_ema.with_ema(linear_model_fn, decay=DECAY, evaluate_with="weights"),
        str(model_dir), config=run_config(), params={"optimizer": "v1"})
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=4, every_n_iter=5)
    est.train(input_fn, steps=5, hooks=[evaluator])
    np.testing.assert_allclose(evaluator.evaluations[-1]["loss"], linear_loss(5)[0], rtol=1e-5)


# The errors, each with its way out.

def test_a_training_without_averages_is_refused(model_dir):
    est = make_estimator(model_dir, "dense", "hook")
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=1)
    with pytest.raises(RuntimeError, match=(
            r"^InMemoryEvaluatorHook: the training graph has no averages named "
            r"'ExponentialMovingAverage' \(it has: none\); pass the hook to train\(\) after "
            r"ExponentialMovingAverageHook / StochasticWeightAveragingHook \(hooks=\[averaging, "
            r"evaluator\]\), or train a with_ema / with_swa model_fn; to evaluate the raw "
            r"weights, use tf.estimator.experimental.InMemoryEvaluatorHook.$")):
        est.train(input_fn, steps=1, hooks=[evaluator])


def test_the_evaluator_listed_before_the_averaging_hook_is_refused(model_dir):
    est = make_estimator(model_dir, "dense", "hook")
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=1)
    with pytest.raises(RuntimeError, match=r"no averages named 'ExponentialMovingAverage' "
                                           r"\(it has: none\); pass the hook to train\(\) after"):
        est.train(input_fn, steps=1, hooks=[
            evaluator, estimator_ema.ExponentialMovingAverageHook(DECAY)])


def test_averages_of_another_name_are_named(model_dir):
    est = make_estimator(model_dir, "dense", "hook")
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=1, average_name="EMA2")
    with pytest.raises(RuntimeError, match=r"no averages named 'EMA2' \(it has: "
                                           r"'ExponentialMovingAverage'\)"):
        est.train(input_fn, steps=1, hooks=[
            estimator_ema.ExponentialMovingAverageHook(DECAY), evaluator])


def test_several_averages_need_a_name(model_dir):
    est = make_estimator(model_dir, "dense", "hook")
    hooks = [estimator_ema.ExponentialMovingAverageHook(DECAY),
             estimator_ema.StochasticWeightAveragingHook(2)]
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=4, every_n_iter=4)
    with pytest.raises(ValueError, match=(
            r"^InMemoryEvaluatorHook: the training graph has averages named "
            r"'ExponentialMovingAverage', 'StochasticWeightAverage'; pass 'average_name' to "
            r"say which to evaluate.$")):
        est.train(input_fn, steps=1, hooks=hooks + [evaluator])
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=4, every_n_iter=4,
                                                    average_name=SWA)
    est.train(input_fn, steps=4, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY),
                                        estimator_ema.StochasticWeightAveragingHook(2),
                                        evaluator])
    # The refused train() ran no step: SWA of the weights after steps 2 to 4.
    assert evaluator.evaluations[-1]["global_step"] == 4
    averages, _ = swa_oracle(sgd_weights(4), 2)
    np.testing.assert_allclose(evaluator.evaluations[-1]["loss"], linear_loss(0, averages)[0],
                               rtol=1e-5)


def test_an_average_name_the_estimator_does_not_evaluate_is_refused(model_dir):
    est = make_estimator(model_dir, "dense", "decorator")
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=1, average_name=SWA)
    with pytest.raises(ValueError, match=(
            r"^'average_name' must be the name of the averages the estimator evaluates, "
            r"'ExponentialMovingAverage' \(got 'StochasticWeightAverage'\).$")):
        est.train(input_fn, steps=1, hooks=[evaluator])


def eval_only_variable_model_fn(features, labels, mode, params):
    spec = linear_model_fn(features, labels, mode, params)
    if mode == EVAL:
        extra = tf1.get_variable("eval_only", [], initializer=tf1.zeros_initializer())
        spec = spec._replace(loss=spec.loss + extra)
    return spec


def reshaped_model_fn(features, labels, mode, params):
    spec = linear_model_fn(features, labels, mode, params)
    size = 2 if mode == EVAL else 1
    tf1.get_variable("other", [size], initializer=tf1.zeros_initializer(), trainable=False)
    return spec


def saveable_model_fn(features, labels, mode, params):
    spec = linear_model_fn(features, labels, mode, params)
    if mode == EVAL:
        tf1.add_to_collection(tf1.GraphKeys.SAVEABLE_OBJECTS, "a table")
    return spec


def test_an_eval_graph_variable_without_a_counterpart_is_refused(model_dir):
    est = make_estimator(model_dir, "dense", "hook")
    evaluated = tf.estimator.Estimator(eval_only_variable_model_fn, str(model_dir),
                                       params={"optimizer": "v1"})
    evaluator = estimator_ema.InMemoryEvaluatorHook(evaluated, input_fn, steps=1)
    with pytest.raises(RuntimeError, match=(
            r"^InMemoryEvaluatorHook: the evaluation graph's global variable\(s\) "
            r"\['eval_only'\] have no counterpart in the training graph to copy \(a checkpoint "
            r"would lack them too\); create them in TRAIN mode too, or make them local "
            r"variables \(collections=\[tf.compat.v1.GraphKeys.LOCAL_VARIABLES\]\).$")):
        est.train(input_fn, steps=1, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY),
                                            evaluator])


def test_an_eval_graph_variable_of_another_shape_is_refused(model_dir):
    est = tf.estimator.Estimator(reshaped_model_fn, str(model_dir), params={"optimizer": "v1"})
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=1)
    with pytest.raises(RuntimeError, match=(
            r"^InMemoryEvaluatorHook: the evaluation graph's other is float32 of shape \[2\], "
            r"but the training graph's other is float32 of shape \[1\].$")):
        est.train(input_fn, steps=1, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY),
                                            evaluator])


def test_saveables_other_than_variables_are_refused(model_dir):
    est = tf.estimator.Estimator(saveable_model_fn, str(model_dir), params={"optimizer": "v1"})
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=1)
    with pytest.raises(RuntimeError, match=(
            r"^InMemoryEvaluatorHook: the evaluation graph has saveable objects other than "
            r"variables \(\['a table'\]\), which cannot be copied from training; evaluate "
            r"checkpoints instead \(averaged_estimator\(estimator\).evaluate, or the with_ema "
            r"/ with_swa Estimator's evaluate\).$")):
        est.train(input_fn, steps=1, hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY),
                                            evaluator])


def test_a_variable_averaged_only_outside_train_is_refused(model_dir):
    est = tf.estimator.Estimator(
        estimator_ema.with_ema(trainable_model_fn, decay=DECAY), str(model_dir),
        params={"trainable": {"kernel": only_outside_train, "bias": always}})
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=1)
    with pytest.raises(RuntimeError, match=(
            r"^InMemoryEvaluatorHook: the estimator's EVAL graph selects \['kernel'\] for "
            r"averaging, but training does not average it \(a variable trainable only outside "
            r"TRAIN, say\); select it in TRAIN too, or in no mode \(exclude=\).$")):
        est.train(input_fn, steps=1, hooks=[evaluator])


def test_some_parts_averaged_is_refused(model_dir):
    est = tf.estimator.Estimator(partitioned_model_fn, str(model_dir))
    evaluator = estimator_ema.InMemoryEvaluatorHook(est, input_fn, steps=1)
    with pytest.raises(RuntimeError, match=(
            r"^InMemoryEvaluatorHook: the training graph has the average of only some parts of "
            r"linear/w, not the slice that the evaluation graph's linear/w/part_1 holds; "
            r"average every part of it, or none \(include= / exclude=\).$")):
        est.train(input_fn, steps=1, hooks=[
            estimator_ema.ExponentialMovingAverageHook(DECAY, exclude="part_1"), evaluator])


def test_a_mirrored_strategy_is_refused(model_dir):
    result = test_distributed._mirrored(model_dir, 1, "evaluator")
    assert result.returncode != 0
    assert re.search(r"RuntimeError: InMemoryEvaluatorHook cannot read variables that "
                     r"MirroredStrategy(V1)? mirrors \(RunConfig\(train_distribute=\.\.\.\)\); "
                     r"evaluate the checkpoints' averages instead \(the with_ema / with_swa "
                     r"Estimator's evaluate\)\.", result.stderr), result.stderr[-3000:]


def test_a_cluster_is_refused(monkeypatch, model_dir):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"chief": ["h:1"], "worker": ["h:2"], '
                                    '"ps": ["h:3"]}, "task": {"type": "chief", "index": 0}}')
    est = tf.estimator.Estimator(linear_model_fn, str(model_dir), config=run_config())
    with pytest.raises(ValueError, match=(
            r"^InMemoryEvaluatorHook evaluates on a single machine only \(got 1 parameter "
            r"server\(s\) and 2 worker\(s\) in estimator.config\); on a cluster, evaluate the "
            r"checkpoints' averages \(averaged_estimator\(estimator\).evaluate, or the with_ema "
            r"/ with_swa Estimator's evaluate\).$")):
        estimator_ema.InMemoryEvaluatorHook(est, input_fn)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(estimator=None), TypeError,
     r"^'estimator' must be a tf.estimator.Estimator or a tf.compat.v1.estimator.Estimator "
     r"\(got None\).$"),
    (dict(input_fn=None), TypeError, r"^'input_fn' must be callable \(got None\).$"),
    (dict(steps=0), ValueError, r"^'steps' must be a positive int \(got 0\).$"),
    (dict(hooks=["hook"]), TypeError,
     r"^'hooks' must be a list of tf.compat.v1.train.SessionRunHook \(got \['hook'\]\).$"),
    (dict(name=3), TypeError, r"^'name' must be None or a string \(got 3\).$"),
    (dict(every_n_iter=0), ValueError, r"^'every_n_iter' must be a positive int \(got 0\).$"),
    (dict(average_name="a b"), ValueError, r"^'average_name' must be a non-empty string"),
], ids=["estimator", "input_fn", "steps", "hooks", "name", "every_n_iter", "average_name"])
def test_bad_arguments_are_named(model_dir, kwargs, error, message):
    arguments = dict(estimator=tf.estimator.Estimator(linear_model_fn, str(model_dir)),
                     input_fn=input_fn)
    arguments.update(kwargs)
    with pytest.raises(error, match=message):
        estimator_ema.InMemoryEvaluatorHook(**arguments)
