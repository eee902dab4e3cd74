"""with_ema: the decorated model_fn through Estimator train/evaluate/predict/export."""

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import (BATCH, DATA, IS_TF1, SWA, ema_oracle, input_fn, linear_model_fn,
                      load, run_config, sgd_weights, swa_oracle, tf1)

EMA = "ExponentialMovingAverage"


def make_estimator(model_dir, model_fn, optimizer="v1", **kwargs):
    return tf.estimator.Estimator(model_fn, str(model_dir), config=run_config(),
                                  params={"optimizer": optimizer}, **kwargs)


def eval_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA).batch(32)


def predict_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA[0]).batch(8)


def predictions(est):
    return np.concatenate([p["y"][None] for p in est.predict(predict_input_fn)])


def numpy_predictions(w, b):
    return DATA[0] @ w + b


def numpy_loss(w, b):
    return np.mean((numpy_predictions(w, b) - DATA[1]) ** 2)


def averages(model_dir):
    return load(model_dir, "linear/w/" + EMA), load(model_dir, "linear/b/" + EMA)


def weights(model_dir):
    return load(model_dir, "linear/w"), load(model_dir, "linear/b")


@pytest.mark.parametrize("optimizer", ["v1", "keras"])
@pytest.mark.parametrize("num_updates", [False, True], ids=["constant", "warmup"])
def test_training_matches_numpy_oracle(model_dir, optimizer, num_updates):
    model_fn = estimator_ema.with_ema(linear_model_fn, decay=0.8, num_updates=num_updates)
    make_estimator(model_dir, model_fn, optimizer).train(input_fn, steps=12)
    trajectory = sgd_weights(12)
    expected = ema_oracle(trajectory, 0.8, num_updates=num_updates)
    np.testing.assert_allclose(weights(model_dir)[0], trajectory[-1][0], atol=1e-5)
    np.testing.assert_allclose(averages(model_dir)[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(averages(model_dir)[1], expected[1], atol=1e-5)


def test_every_n_steps_and_zero_debias(tmp_path):
    every = estimator_ema.with_ema(linear_model_fn, decay=0.8, every_n_steps=3)
    make_estimator(tmp_path / "every", every).train(input_fn, steps=9)
    expected = ema_oracle(sgd_weights(9), 0.8, every_n_steps=3)
    np.testing.assert_allclose(averages(tmp_path / "every")[0], expected[0], atol=1e-5)
    debias = estimator_ema.with_ema(linear_model_fn, decay=0.9, zero_debias=True)
    make_estimator(tmp_path / "debias", debias).train(input_fn, steps=5)
    expected = ema_oracle(sgd_weights(5), 0.9, zero_debias=True)
    np.testing.assert_allclose(averages(tmp_path / "debias")[0], expected[0], atol=1e-5)


def test_hook_and_decorator_agree(tmp_path):
    make_estimator(tmp_path / "hook", linear_model_fn).train(
        input_fn, steps=7, hooks=[estimator_ema.ExponentialMovingAverageHook(0.7)])
    make_estimator(tmp_path / "dec", estimator_ema.with_ema(linear_model_fn, decay=0.7)).train(
        input_fn, steps=7)
    for a, b in zip(averages(tmp_path / "hook"), averages(tmp_path / "dec")):
        np.testing.assert_allclose(a, b, atol=1e-6)


def _decorated_forms():
    @estimator_ema.with_ema
    def bare(features, labels, mode, params):
        return linear_model_fn(features, labels, mode, params)

    @estimator_ema.with_ema(decay=0.5)
    def called(features, labels, mode, params):
        return linear_model_fn(features, labels, mode, params)

    return {"bare": (bare, 0.999), "called": (called, 0.5),
            "functional": (estimator_ema.with_ema(linear_model_fn, decay=0.5), 0.5)}


@pytest.mark.parametrize("form", ["bare", "called", "functional"])
def test_three_decorator_forms(model_dir, form):
    model_fn, decay = _decorated_forms()[form]
    make_estimator(model_dir, model_fn).train(input_fn, steps=3)
    expected = ema_oracle(sgd_weights(3), decay)
    np.testing.assert_allclose(averages(model_dir)[0], expected[0], atol=1e-5)


def _signature_cases():
    seen = {}

    def plain(features, labels, mode):
        seen["plain"] = {}
        return linear_model_fn(features, labels, mode, {})

    def with_params(features, labels, mode, params):
        seen["params"] = {"params": dict(params)}
        return linear_model_fn(features, labels, mode, params)

    def with_config(features, labels, mode, config):
        seen["config"] = {"config": config}
        return linear_model_fn(features, labels, mode, {})

    def with_both(features, labels, mode, config, params):
        seen["both"] = {"params": dict(params), "config": config}
        return linear_model_fn(features, labels, mode, params)

    return seen, {"plain": plain, "params": with_params, "config": with_config,
                  "both": with_both}


@pytest.mark.parametrize("case", ["plain", "params", "config", "both"])
def test_model_fn_receives_exactly_what_it_asks_for(model_dir, case):
    seen, cases = _signature_cases()
    params = {"optimizer": "v1"} if case in ("params", "both") else None
    est = tf.estimator.Estimator(estimator_ema.with_ema(cases[case], decay=0.5), str(model_dir),
                                 config=run_config(), params=params)
    est.train(input_fn, steps=1)
    got = seen[case]
    if "params" in got:
        assert got["params"] == {"optimizer": "v1"}
    if "config" in got:
        assert isinstance(got["config"], tf.estimator.RunConfig)
    assert set(got) == {"plain": set(), "params": {"params"}, "config": {"config"},
                        "both": {"params", "config"}}[case]


def test_estimator_still_rejects_params_the_model_fn_does_not_take(model_dir):
    _, cases = _signature_cases()
    with pytest.raises(ValueError, match="params"):
        tf.estimator.Estimator(estimator_ema.with_ema(cases["plain"]), str(model_dir),
                               params={"optimizer": "v1"})


@pytest.fixture
def trained(model_dir):
    model_fn = estimator_ema.with_ema(linear_model_fn, decay=0.8)
    make_estimator(model_dir, model_fn).train(input_fn, steps=10)
    raw, avg = numpy_loss(*weights(model_dir)), numpy_loss(*averages(model_dir))
    assert abs(raw - avg) > 1e-3
    return model_dir


def test_evaluate_and_predict_use_the_averages_by_default(trained):
    est = make_estimator(trained, estimator_ema.with_ema(linear_model_fn, decay=0.8))
    np.testing.assert_allclose(est.evaluate(eval_input_fn)["loss"],
                               numpy_loss(*averages(trained)), rtol=1e-5)
    np.testing.assert_allclose(predictions(est), numpy_predictions(*averages(trained)),
                               atol=1e-5)


def test_evaluate_with_weights_uses_the_raw_weights(trained):
    model_fn = estimator_ema.with_ema(linear_model_fn, decay=0.8, evaluate_with="weights")
    est = make_estimator(trained, model_fn)
    np.testing.assert_allclose(est.evaluate(eval_input_fn)["loss"],
                               numpy_loss(*weights(trained)), rtol=1e-5)
    np.testing.assert_allclose(predictions(est), numpy_predictions(*weights(trained)),
                               atol=1e-5)


def test_evaluate_with_both_reports_both(trained):
    model_fn = estimator_ema.with_ema(linear_model_fn, decay=0.8, evaluate_with="both")
    est = make_estimator(trained, model_fn)
    metrics = est.evaluate(eval_input_fn)
    np.testing.assert_allclose(metrics["loss"], numpy_loss(*averages(trained)), rtol=1e-5)
    np.testing.assert_allclose(metrics["raw_weights/loss"], numpy_loss(*weights(trained)),
                               rtol=1e-5)
    np.testing.assert_allclose(predictions(est), numpy_predictions(*averages(trained)),
                               atol=1e-5)


def test_both_with_optimizer_slots_built_in_eval(model_dir):
    """A model_fn that builds its optimizer in EVAL too: the second build's slot
    variables are unused by its metrics and must not break evaluation."""
    model_fn = estimator_ema.with_ema(linear_model_fn, decay=0.8, evaluate_with="both")
    est = make_estimator(model_dir, model_fn, optimizer="momentum")
    est.train(input_fn, steps=6)
    metrics = est.evaluate(eval_input_fn)
    np.testing.assert_allclose(metrics["loss"], numpy_loss(*averages(model_dir)), rtol=1e-5)
    np.testing.assert_allclose(metrics["raw_weights/loss"], numpy_loss(*weights(model_dir)),
                               rtol=1e-5)


def test_both_fails_clearly_for_keras_layers(tmp_path):
    def keras_model_fn(features, labels, mode):
        layer = tf.keras.layers.Dense(1)
        out = layer(features)
        loss = tf.reduce_mean(tf.square(out - labels))
        step = tf1.train.get_or_create_global_step()
        train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    est = tf.estimator.Estimator(
        estimator_ema.with_ema(keras_model_fn, evaluate_with="both"), str(tmp_path),
        config=run_config())
    est.train(input_fn, steps=2)
    with pytest.raises(ValueError, match=r"evaluate_with='both' builds the model_fn again "
                                         r"under the 'raw_weights' variable scope, but this "
                                         r"model's variables do not follow it"):
        est.evaluate(eval_input_fn)


def _graph_variables(model_fn, mode):
    with tf.Graph().as_default():
        x = tf.constant(DATA[0][:BATCH])
        y = tf.constant(DATA[1][:BATCH])
        model_fn(x, y, mode, {})
        return sorted(v.op.name for v in tf1.global_variables())


@pytest.mark.parametrize("mode", [tf.estimator.ModeKeys.EVAL, tf.estimator.ModeKeys.PREDICT])
def test_no_shadow_variables_in_eval_and_predict_graphs(mode):
    model_fn = estimator_ema.with_ema(linear_model_fn, evaluate_with="both")
    assert not [n for n in _graph_variables(model_fn, mode) if EMA in n]


def test_batch_norm_statistics_updated_and_averaged(model_dir):
    """BN on the raw features: its batch statistics do not depend on the weights,
    so numpy gives the moving mean after each step, and the average of that."""

    def bn_model_fn(features, labels, mode):
        training = mode == tf.estimator.ModeKeys.TRAIN
        normed = tf1.layers.batch_normalization(features, momentum=0.9, training=training,
                                                name="bn")
        w = tf1.get_variable("w", [3, 1], initializer=tf1.zeros_initializer())
        loss = tf.reduce_mean(tf.square(tf.matmul(normed, w) - labels))
        step = tf1.train.get_or_create_global_step()
        # UPDATE_OPS deliberately not wired: the decorator must run them.
        train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    steps = 6
    est = tf.estimator.Estimator(estimator_ema.with_ema(bn_model_fn, decay=0.5),
                                 str(model_dir), config=run_config())
    est.train(input_fn, steps=steps)
    x = DATA[0].astype(np.float64)
    moving = [np.zeros(3)]
    for step in range(steps):
        batch = x[(step % 4) * BATCH:(step % 4 + 1) * BATCH]
        moving.append(moving[-1] * 0.9 + batch.mean(axis=0) * 0.1)
    np.testing.assert_allclose(load(model_dir, "bn/moving_mean"), moving[-1], atol=1e-5)
    expected = ema_oracle([(m,) for m in moving], 0.5)[0]
    np.testing.assert_allclose(load(model_dir, "bn/moving_mean/" + EMA), expected, atol=1e-5)
    assert load(model_dir, "bn/moving_variance/" + EMA).shape == (3,)


def test_averages_start_from_warm_started_weights(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    make_estimator(source, linear_model_fn).train(input_fn, steps=5)
    warm = weights(source)
    model_fn = estimator_ema.with_ema(linear_model_fn, decay=0.9)
    make_estimator(target, model_fn, warm_start_from=str(source)).train(input_fn, steps=1)
    expected = ema_oracle(sgd_weights(1, *warm), 0.9)
    np.testing.assert_allclose(averages(target)[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(averages(target)[1], expected[1], atol=1e-5)


def test_resume_continues_the_average(tmp_path):
    model_fn = estimator_ema.with_ema(linear_model_fn, decay=0.8)
    make_estimator(tmp_path / "one", model_fn).train(input_fn, steps=8)
    est = make_estimator(tmp_path / "two", model_fn)
    # Each train() call restarts input_fn; 4 steps is a whole pass over the data,
    # so both runs see the same batches.
    est.train(input_fn, steps=4)
    est.train(input_fn, steps=4)
    for a, b in zip(averages(tmp_path / "one"), averages(tmp_path / "two")):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_train_and_evaluate(model_dir):
    model_fn = estimator_ema.with_ema(linear_model_fn, decay=0.8)
    est = make_estimator(model_dir, model_fn)
    metrics, _ = tf.estimator.train_and_evaluate(
        est, tf.estimator.TrainSpec(input_fn, max_steps=10),
        tf.estimator.EvalSpec(eval_input_fn, steps=None, throttle_secs=0))
    np.testing.assert_allclose(metrics["loss"], numpy_loss(*averages(model_dir)), rtol=1e-5)


def _serving_input_fn():
    x = tf1.placeholder(tf.float32, [None, 3], name="x")
    return tf.estimator.export.ServingInputReceiver({"x": x}, {"x": x})


def _linear_serving_model_fn(features, labels, mode, params):
    if isinstance(features, dict):
        features = features["x"]
    return linear_model_fn(features, labels, mode, params)


def test_plain_export_serves_the_averages_under_plain_names(tmp_path):
    model_fn = estimator_ema.with_ema(_linear_serving_model_fn, decay=0.8)
    est = make_estimator(tmp_path / "model", model_fn)
    est.train(input_fn, steps=10)
    export_dir = est.export_saved_model(str(tmp_path / "export"), _serving_input_fn)
    if isinstance(export_dir, bytes):
        export_dir = export_dir.decode()
    saved = {n for n, _ in tf.train.list_variables(export_dir + "/variables/variables")}
    assert saved == {"linear/w", "linear/b", "global_step"}
    np.testing.assert_array_equal(load(export_dir + "/variables/variables", "linear/w"),
                                  averages(tmp_path / "model")[0])
    with tf.Graph().as_default(), tf1.Session() as session:
        meta = tf1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta.signature_def["serving_default"]
        served = session.run(signature.outputs["y"].name,
                             {signature.inputs["x"].name: DATA[0]})
    np.testing.assert_allclose(served, numpy_predictions(*averages(tmp_path / "model")),
                               atol=1e-5)


def test_package_export_of_a_decorated_model(tmp_path):
    model_fn = estimator_ema.with_ema(_linear_serving_model_fn, decay=0.8)
    est = make_estimator(tmp_path / "model", model_fn)
    est.train(input_fn, steps=10)
    export_dir = estimator_ema.export_saved_model(est, str(tmp_path / "export"),
                                                  _serving_input_fn)
    if isinstance(export_dir, bytes):
        export_dir = export_dir.decode()
    variables = export_dir + "/variables/variables"
    assert {n for n, _ in tf.train.list_variables(variables)} == {
        "linear/w", "linear/b", "global_step"}
    np.testing.assert_array_equal(load(variables, "linear/w"), averages(tmp_path / "model")[0])


@pytest.mark.parametrize("kwargs, error, message", [
    ({"evaluate_with": "mean"}, ValueError,
     r"'evaluate_with' must be one of 'averages', 'weights', 'both' \(got 'mean'\)\."),
    ({"decay": 2}, ValueError, r"'decay' must be a float in \[0, 1\) \(got 2\)\."),
    ({"every_n_steps": -1}, ValueError, r"'every_n_steps' must be a positive int \(got -1\)\."),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        estimator_ema.with_ema(linear_model_fn, **kwargs)


def test_positional_decay_is_explained():
    with pytest.raises(TypeError, match=r"'model_fn' must be callable \(got 0.99\); pass the "
                                        r"options by keyword, e.g. @with_ema\(decay=0.99\)\."):
        estimator_ema.with_ema(0.99)


def test_model_fn_must_return_an_estimator_spec():
    model_fn = estimator_ema.with_ema(lambda features, labels, mode: None)
    with pytest.raises(TypeError, match=r"The decorated model_fn must return a "
                                        r"tf.estimator.EstimatorSpec or a TPUEstimatorSpec "
                                        r"\(got None\)\."):
        model_fn(None, None, tf.estimator.ModeKeys.TRAIN)


# with_ema(estimator): an Estimator whose model_fn is decorated.

FLAVOURS = {"v2": tf.estimator.Estimator, "v1": tf1.estimator.Estimator}


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_an_estimator_is_decorated(model_dir, flavour):
    config = run_config(save_checkpoints_steps=5)
    est = FLAVOURS[flavour](linear_model_fn, str(model_dir), config=config,
                            params={"optimizer": "v1"})
    decorated = estimator_ema.with_ema(est, decay=0.8)
    assert type(decorated) is FLAVOURS[flavour]
    assert decorated.model_dir == est.model_dir
    assert decorated.params == {"optimizer": "v1"}
    assert decorated.config.save_checkpoints_steps == 5
    assert decorated.config.tf_random_seed == 0
    decorated.train(input_fn, steps=10)
    expected = ema_oracle(sgd_weights(10), 0.8)
    np.testing.assert_allclose(averages(model_dir)[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(averages(model_dir)[1], expected[1], atol=1e-5)
    np.testing.assert_allclose(decorated.evaluate(eval_input_fn)["loss"],
                               numpy_loss(*averages(model_dir)), rtol=1e-5)
    np.testing.assert_allclose(predictions(decorated), numpy_predictions(*averages(model_dir)),
                               atol=1e-5)
    # The original Estimator is untouched: it evaluates the raw weights.
    np.testing.assert_allclose(est.evaluate(eval_input_fn)["loss"],
                               numpy_loss(*weights(model_dir)), rtol=1e-5)


def test_an_estimator_through_the_decorator_form_and_swa(tmp_path):
    est = make_estimator(tmp_path / "ema", linear_model_fn)
    estimator_ema.with_ema(decay=0.5)(est).train(input_fn, steps=3)
    expected = ema_oracle(sgd_weights(3), 0.5)
    np.testing.assert_allclose(averages(tmp_path / "ema")[0], expected[0], atol=1e-5)
    est = make_estimator(tmp_path / "swa", linear_model_fn)
    estimator_ema.with_swa(est, start_step=2, average_period=2).train(input_fn, steps=7)
    expected, count = swa_oracle(sgd_weights(7), 2, 2)
    np.testing.assert_allclose(load(tmp_path / "swa", "linear/w/" + SWA), expected[0],
                               atol=1e-5)
    assert load(tmp_path / "swa", SWA + "/count") == count


def test_an_estimators_warm_start_is_kept(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    make_estimator(source, linear_model_fn).train(input_fn, steps=5)
    warm = weights(source)
    est = make_estimator(target, linear_model_fn, warm_start_from=str(source))
    estimator_ema.with_ema(est, decay=0.9).train(input_fn, steps=1)
    expected = ema_oracle(sgd_weights(1, *warm), 0.9)
    np.testing.assert_allclose(averages(target)[0], expected[0], atol=1e-5)
    np.testing.assert_allclose(averages(target)[1], expected[1], atol=1e-5)


def test_an_estimator_decorated_twice_is_refused(model_dir):
    twice = estimator_ema.with_ema(estimator_ema.with_ema(make_estimator(model_dir,
                                                                         linear_model_fn)))
    with pytest.raises(RuntimeError, match=r"already has an average named"):
        twice.train(input_fn, steps=1)


def test_an_estimators_exporters_serve_the_averages(model_dir):
    est = estimator_ema.with_ema(make_estimator(model_dir, _linear_serving_model_fn), decay=0.8)
    exporters = [tf.estimator.FinalExporter("final", _serving_input_fn),
                 tf.estimator.LatestExporter("latest", _serving_input_fn)]
    if not IS_TF1:
        # TF 1.15's BestExporter reads the evaluation it is called for back from
        # the event files as the best so far, and so never exports it.
        exporters.append(tf.estimator.BestExporter("best", _serving_input_fn))
    tf.estimator.train_and_evaluate(
        est, tf.estimator.TrainSpec(input_fn, max_steps=10),
        tf.estimator.EvalSpec(eval_input_fn, steps=None, throttle_secs=0, exporters=exporters))
    for name in [exporter.name for exporter in exporters]:
        export_dir, = tf1.gfile.Glob(str(model_dir / "export" / name / "*"))
        variables = export_dir + "/variables/variables"
        assert {n for n, _ in tf.train.list_variables(variables)} == {
            "linear/w", "linear/b", "global_step"}
        np.testing.assert_array_equal(load(variables, "linear/w"), averages(model_dir)[0])


def layers_model_fn(features, labels, mode, params):
    """`params["layers"]` dense layers (two variables each) trained by SGD."""
    x = features
    for i in range(params["layers"]):
        x = tf1.layers.dense(x, 4, name="dense_%d" % i)
    loss = tf.reduce_mean(tf.square(x[:, :1] - labels))
    train_op = tf1.train.GradientDescentOptimizer(0.01).minimize(
        loss, tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def _nodes_run(model_fn, layers, steps, hooks=()):
    """The names of the nodes each of `steps` runs of `model_fn`'s train op runs
    (a global step 1, 2, ...) in a session with `hooks`, from a full trace."""
    with tf.Graph().as_default():
        tf1.train.get_or_create_global_step()
        spec = model_fn(tf.constant(DATA[0]), tf.constant(DATA[1]),
                        tf.estimator.ModeKeys.TRAIN, {"layers": layers})
        creator = tf1.train.ChiefSessionCreator(scaffold=spec.scaffold)
        with tf1.train.MonitoredSession(creator, hooks=list(hooks)) as session:
            runs = []
            for _ in range(steps):
                metadata = tf1.RunMetadata()
                session.run(spec.train_op, run_metadata=metadata,
                            options=tf1.RunOptions(trace_level=tf1.RunOptions.FULL_TRACE))
                runs.append({n.node_name.partition(":")[0] for d in metadata.step_stats.dev_stats
                             for n in d.node_stats})
    return runs


def stock_ema_model_fn(features, labels, mode, params):
    """`layers_model_fn` averaged as users do with stock EMA (as EfficientNet
    does): `ema.apply` of the trainable variables after the train op."""
    spec = layers_model_fn(features, labels, mode, params)
    ema = tf1.train.ExponentialMovingAverage(0.999, num_updates=tf1.train.get_global_step())
    with tf.control_dependencies([spec.train_op]):
        train_op = ema.apply(tf1.trainable_variables())
    return spec._replace(train_op=train_op)


def test_a_step_of_the_hook_or_the_decorator_runs_no_more_nodes_per_variable_than_stock():
    # What a training step runs beyond the model's own, per variable (the
    # growth from 4 to 24 variables, over 20): the package's update 5 nodes
    # (the average's variable node, reads of the average and the weight, a
    # subtraction, one in-place apply that scales and subtracts), whether the
    # hook weaves it or the decorator builds it; stock EMA on TF 2 6 (a
    # multiplication and an in-place subtraction for the apply), on TF 1.15 5
    # too (it reads the weight through the model's own snapshot, which a
    # write in place may or may not have changed).
    plain = {layers: _nodes_run(layers_model_fn, layers, 3)[-1] for layers in (2, 12)}

    def extra(model_fn, layers, hooks):
        return len(_nodes_run(model_fn, layers, 3, hooks)[-1] - plain[layers])

    def per_variable(model_fn, hooks=lambda: ()):
        return (extra(model_fn, 12, hooks()) - extra(model_fn, 2, hooks())) / 20.0

    counts = {
        "stock": per_variable(stock_ema_model_fn),
        "hook": per_variable(layers_model_fn,
                             lambda: [estimator_ema.ExponentialMovingAverageHook(0.999)]),
        "with_ema": per_variable(estimator_ema.with_ema(layers_model_fn, decay=0.999)),
    }
    assert counts == {"stock": 5 if IS_TF1 else 6, "hook": 5, "with_ema": 5}


def test_a_gated_update_runs_in_a_graph_imported_under_a_prefix():
    # The gated update reads the averages through copies of their variable
    # nodes made behind the gate; they stay the same variables in a graph
    # imported under a prefix (TF 1.15's reference variables are named at run
    # time by their node unless they have a shared name).
    with tf.Graph().as_default():
        tf1.train.get_or_create_global_step()
        spec = estimator_ema.with_ema(layers_model_fn, decay=0.5, every_n_steps=2,
                                      num_updates=False)(
            tf.constant(DATA[0]), tf.constant(DATA[1]), tf.estimator.ModeKeys.TRAIN,
            {"layers": 1})
        meta, train_op = tf1.train.export_meta_graph(), spec.train_op.name
    with tf.Graph().as_default() as graph:
        tf1.train.import_meta_graph(meta, import_scope="copy")

        def value(name):
            node = graph.get_tensor_by_name("copy/dense_0/kernel%s:0" % name)
            if node.dtype == tf.resource:
                return tf.raw_ops.ReadVariableOp(resource=node, dtype=tf.float32)
            return node

        average, weight = value("/" + EMA), value("")
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            session.run(["copy/dense_0/%s/%s/Assign" % (v, EMA) for v in ("kernel", "bias")])
            start = session.run(average)
            for _ in range(2):  # global steps 1 and 2: one update, due after 2
                session.run(graph.get_operation_by_name("copy/" + train_op))
            # The decay of an update every 2 steps: 0.5 ** 2.
            np.testing.assert_allclose(session.run(average),
                                       0.25 * start + 0.75 * session.run(weight),
                                       atol=1e-6)  # float32 rounding: a few ulp


@pytest.mark.parametrize("decorate, not_due", [
    (lambda fn: estimator_ema.with_ema(fn, decay=0.9, every_n_steps=5), [1, 2, 3, 4, 6, 7, 8, 9]),
    # (Until its first entry, at step 5, SWA mirrors the weights every step.)
    (lambda fn: estimator_ema.with_swa(fn, start_step=5, average_period=5), [6, 7, 8, 9]),
], ids=["ema", "swa"])
def test_a_run_whose_update_is_not_due_runs_a_few_ops_whatever_the_variables(decorate,
                                                                               not_due):
    # The gate is one switch of the step's due flag: no node per variable runs
    # in a run whose update is not due, not even the averages' variable nodes
    # (the update reads them through copies behind the gate). Global step 10
    # is due.
    extra = {}
    for layers in (2, 12):
        plain = set.union(*_nodes_run(layers_model_fn, layers, 1))
        runs = _nodes_run(decorate(layers_model_fn), layers, 10)
        extra[layers] = [len(run - plain) for run in runs]
    skipped = {layers: [counts[step - 1] for step in not_due] for layers, counts in extra.items()}
    assert skipped[2] == skipped[12]
    assert max(skipped[12]) <= 16 < 4 * 24 < extra[12][9]
