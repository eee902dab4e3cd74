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


# Canned v1 linear Estimators: their weights are partitioned, in one part even
# without a partitioner, and in two with one.

COLUMNS = [tf.feature_column.numeric_column("x", shape=[FEATURES])]
PARTS = ["linear/linear_model/x/weights/part_%d" % i for i in range(2)]


def _canned_input_fn(labels="regression"):
    x, y = DATA
    y = y if labels == "regression" else (y > 0).astype(np.int64)
    return lambda: tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(8).repeat()


class _RecordParts(tf1.train.SessionRunHook):
    """Records the whole of the partitioned weight before training and after each step."""

    def __init__(self):
        self.trajectory = []

    def begin(self):
        variables = {v.op.name: v for v in tf1.global_variables()}
        self._parts = [variables[part] for part in PARTS]

    def _record(self, session):
        self.trajectory.append((np.concatenate(session.run(self._parts)),))

    def after_create_session(self, session, coord):
        self._record(session)

    def after_run(self, run_context, run_values):
        self._record(run_context.session)


def _keys(path):
    return sorted(k for k, _ in tf.train.list_variables(str(path)))


def _canned(kind, model_dir):
    kwargs = dict(feature_columns=COLUMNS, model_dir=str(model_dir), config=run_config(),
                  partitioner=tf1.fixed_size_partitioner(2))
    if kind == "regressor":
        return tf1.estimator.LinearRegressor(**kwargs)
    return tf1.estimator.LinearClassifier(**kwargs)


@pytest.mark.parametrize("how", ["hook", "decorator"])
@pytest.mark.parametrize("kind", ["regressor", "classifier"])
def test_canned_linear_estimators(model_dir, tmp_path, kind, how):
    canned = _canned(kind, model_dir)
    labels = "regression" if kind == "regressor" else "classes"
    record = _RecordParts()
    if how == "hook":
        canned.train(_canned_input_fn(labels), steps=STEPS,
                     hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY), record])
    else:
        decorated = tf1.estimator.Estimator(
            estimator_ema.with_ema(canned.model_fn, decay=DECAY), str(model_dir),
            config=run_config())
        decorated.train(_canned_input_fn(labels), steps=STEPS, hooks=[record])
    assert len(record.trajectory) == STEPS + 1
    name = "linear/linear_model/x/weights"
    keys = dict(tf.train.list_variables(str(model_dir)))
    assert keys[name + "/" + EMA] == [FEATURES, 1]
    (expected,) = ema_oracle(record.trajectory, DECAY)
    np.testing.assert_allclose(estimator_ema.read_averages(str(model_dir))[name], expected,
                               atol=1e-6)
    assert np.abs(expected - load(model_dir, name)).max() > 1e-3

    predict = {"regressor": "predictions", "classifier": "logits"}[kind]

    def predictions(est, **kwargs):
        return np.array([p[predict] for p in est.predict(
            lambda: tf.data.Dataset.from_tensor_slices({"x": DATA[0]}).batch(8), **kwargs)])

    raw = predictions(canned)
    # The same model as a tf.estimator.Estimator, which averaged_estimator and
    # export_saved_model take (the v1 class is another class in TF 2).
    served = tf.estimator.Estimator(canned.model_fn, str(model_dir), config=run_config())
    averaged = predictions(estimator_ema.averaged_estimator(served))
    assert np.abs(averaged - raw).max() > 1e-3
    output = estimator_ema.write_averaged_checkpoint(str(model_dir),
                                                     str(tmp_path / "rewritten" / "model.ckpt"))
    np.testing.assert_allclose(load(output, name), expected, atol=1e-6)
    np.testing.assert_allclose(predictions(_canned(kind, tmp_path / "rewritten")), averaged,
                               atol=1e-5)
    # Ftrl's slots of each part (`<name>/part_<i>/Ftrl`, each holding its
    # part's slice only) are copied as those slices, or dropped with the slots.
    slots = sorted(k for k, _ in tf.train.list_variables(str(model_dir)) if "Ftrl" in k)
    assert name + "/part_1/Ftrl" in slots
    assert [k for k in _keys(output) if "Ftrl" in k] == slots
    resumed = _canned(kind, tmp_path / "rewritten")
    resumed.train(_canned_input_fn(labels), steps=1)
    dropped = estimator_ema.write_averaged_checkpoint(
        str(model_dir), str(tmp_path / "dropped" / "model.ckpt"), drop_optimizer_slots=True)
    assert not [k for k in _keys(dropped) if "Ftrl" in k]
    export_dir = estimator_ema.export_saved_model(
        served, str(tmp_path / "export"),
        tf.estimator.export.build_parsing_serving_input_receiver_fn(
            tf.feature_column.make_parse_example_spec(COLUMNS)))
    variables = os.path.join(export_dir.decode(), "variables", "variables")
    np.testing.assert_allclose(load(variables, name), expected, atol=1e-6)


class _RecordAll(tf1.train.SessionRunHook):
    """Records every trainable variable, parts joined into the whole, before
    training and after each step: `[{checkpoint key: value}]`."""

    def __init__(self):
        self.trajectory = []

    def begin(self):
        self._variables = tf1.trainable_variables()

    def _record(self, session):
        whole = {}
        for var, value in zip(self._variables, session.run(self._variables)):
            info = var._get_save_slice_info()
            key = var.op.name if info is None else info.full_name
            whole.setdefault(key, []).append(
                (0 if info is None else info.var_offset[0], value))
        self.trajectory.append({key: np.concatenate([v for _, v in sorted(parts)])
                                for key, parts in whole.items()})

    def after_create_session(self, session, coord):
        self._record(session)

    def after_run(self, run_context, run_values):
        self._record(run_context.session)


@pytest.mark.parametrize("how", ["hook", "decorator"])
def test_dnn_classifier_with_a_partitioned_embedding_input_layer(model_dir, tmp_path, how):
    ids = tf.feature_column.categorical_column_with_identity("id", 16)
    est = tf1.estimator.DNNClassifier(
        hidden_units=[4], feature_columns=[tf.feature_column.embedding_column(ids, 4)],
        model_dir=str(model_dir), config=run_config(),
        input_layer_partitioner=tf1.fixed_size_partitioner(2))
    x, y = DATA

    def input_fn():
        features = {"id": (np.abs(x[:, :1]) * 5).astype(np.int64) % 16}
        return tf.data.Dataset.from_tensor_slices((features, (y > 0).astype(np.int64))).batch(
            8).repeat()

    record = _RecordAll()
    if how == "hook":
        est.train(input_fn, steps=STEPS,
                  hooks=[estimator_ema.ExponentialMovingAverageHook(DECAY), record])
    else:
        tf1.estimator.Estimator(estimator_ema.with_ema(est.model_fn, decay=DECAY),
                                str(model_dir), config=run_config()).train(
            input_fn, steps=STEPS, hooks=[record])
    averages = estimator_ema.read_averages(str(model_dir))
    table = "dnn/input_from_feature_columns/input_layer/id_embedding/embedding_weights"
    keys = dict(tf.train.list_variables(str(model_dir)))
    assert keys[table] == keys[table + "/" + EMA] == [16, 4]
    assert sorted(averages) == sorted(record.trajectory[0])
    for key in averages:
        (expected,) = ema_oracle([(step[key],) for step in record.trajectory], DECAY)
        np.testing.assert_allclose(averages[key], expected, atol=1e-5, err_msg=key)
    output = estimator_ema.write_averaged_checkpoint(str(model_dir),
                                                     str(tmp_path / "rewritten" / "model.ckpt"))
    np.testing.assert_array_equal(load(output, table), averages[table])
