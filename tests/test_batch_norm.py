"""update_batch_norm: batch-norm statistics recomputed for the SWA weights."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import BATCH, DATA, input_fn, linear_model_fn, load, run_config, tf1

SWA = "StochasticWeightAverage"
UNITS = 4


def _batch_norm(hidden, kind, training):
    if kind == "v1":
        return tf1.layers.batch_normalization(hidden, momentum=0.9, training=training, name="bn")
    if kind == "v1-fused":
        image = tf.reshape(hidden, [-1, 1, 1, UNITS])
        normed = tf1.layers.batch_normalization(image, momentum=0.9, training=training,
                                                fused=True, name="bn")
        return tf.reshape(normed, [-1, UNITS])
    if kind == "keras":
        return tf.keras.layers.BatchNormalization(momentum=0.9, name="bn")(hidden,
                                                                          training=training)
    import tf_slim as slim
    return slim.batch_norm(hidden, decay=0.9, is_training=training, scope="bn",
                           zero_debias_moving_mean=kind == "slim-zero-debias")


def bn_model_fn(features, labels, mode, params):
    """x -> dense -> batch norm -> relu -> dense, trained by SGD."""
    training = mode == tf.estimator.ModeKeys.TRAIN
    hidden = tf1.layers.dense(features, UNITS, name="dense",
                              kernel_initializer=tf1.glorot_uniform_initializer(seed=1))
    normed = _batch_norm(hidden, params["kind"], training)
    out = tf1.layers.dense(tf.nn.relu(normed), 1, name="out",
                           kernel_initializer=tf1.glorot_uniform_initializer(seed=2))
    loss = tf.reduce_mean(tf.square(out - labels))
    step = tf1.train.get_or_create_global_step()
    with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
        train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op,
                                      predictions={"y": out})


def bn_estimator(model_dir, kind, model_fn=bn_model_fn):
    return tf.estimator.Estimator(model_fn, str(model_dir), config=run_config(),
                                  params={"kind": kind})


def snapshot(directory):
    """Every file under `directory` with its size and modification time."""
    found = {}
    for root, _, files in os.walk(str(directory)):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            found[os.path.join(root, name)] = (stat.st_size, stat.st_mtime_ns)
    return found


# Fused kernels put the Bessel-corrected batch variance into the moving average.
KINDS = [("v1", 0), ("v1-fused", 1), ("keras", 0), ("slim", 1)]


@pytest.mark.usefixtures("slim_compatible")
@pytest.mark.parametrize("kind, ddof", KINDS, ids=[k for k, _ in KINDS])
def test_statistics_match_numpy(tmp_path, kind, ddof):
    model_dir, output_dir = tmp_path / "model", tmp_path / "bn"
    est = bn_estimator(model_dir, kind)
    est.train(input_fn, steps=6, hooks=[estimator_ema.StochasticWeightAveragingHook(2)])
    before = snapshot(model_dir)
    path = estimator_ema.update_batch_norm(est, input_fn, steps=3, output_dir=str(output_dir))

    assert path == os.path.join(str(output_dir), "model.ckpt-6")
    assert tf.train.latest_checkpoint(str(output_dir)) == path
    assert snapshot(model_dir) == before
    assert not [f for f in os.listdir(str(output_dir)) if ".tmp" in f]
    kernel, bias = load(model_dir, "dense/kernel/" + SWA), load(model_dir, "dense/bias/" + SWA)
    np.testing.assert_array_equal(load(path, "dense/kernel"), kernel)
    np.testing.assert_array_equal(load(path, "out/kernel"), load(model_dir, "out/kernel/" + SWA))
    x = DATA[0].astype(np.float64)
    hidden = [x[i * BATCH:(i + 1) * BATCH] @ kernel + bias for i in range(3)]
    mean = np.mean([h.mean(axis=0) for h in hidden], axis=0)
    variance = np.mean([h.var(axis=0, ddof=ddof) for h in hidden], axis=0)
    np.testing.assert_allclose(load(path, "bn/moving_mean"), mean, atol=1e-5)
    np.testing.assert_allclose(load(path, "bn/moving_variance"), variance, atol=1e-5)
    # Plain names only: no averages, no count.
    source = {n for n, _ in tf.train.list_variables(str(model_dir))}
    written = {n for n, _ in tf.train.list_variables(path)}
    assert written == {n for n in source if SWA not in n}


def test_decorated_estimator_and_default_output_dir(tmp_path):
    model_dir = tmp_path / "model"
    model_fn = estimator_ema.with_swa(bn_model_fn, start_step=1)
    est = bn_estimator(model_dir, "v1", model_fn=model_fn)
    est.train(input_fn, steps=4)
    path = estimator_ema.update_batch_norm(est, input_fn, steps=4)
    assert path == os.path.join(str(model_dir) + "_swa_bn", "model.ckpt-4")
    kernel = load(model_dir, "dense/kernel/" + SWA)
    bias = load(model_dir, "dense/bias/" + SWA)
    hidden = DATA[0].astype(np.float64) @ kernel + bias
    # Four batches of eight: the mean of the batch means is the mean.
    np.testing.assert_allclose(load(path, "bn/moving_mean"), hidden.mean(axis=0), atol=1e-5)
    assert not [n for n, _ in tf.train.list_variables(path) if SWA in n]


# "Training" sets the kernel to KERNELS[global step % 2]: the averaged kernel is
# their mean, and the statistics of relu(x @ mean) are not the mean of theirs.
KERNELS = np.array([[[1.0], [0.0], [0.0]], [[0.0], [1.0], [0.0]]], np.float32)
BN_EPSILON = 1e-3


def alternating_model_fn(features, labels, mode):
    training = mode == tf.estimator.ModeKeys.TRAIN
    kernel = tf1.get_variable("dense/kernel", initializer=KERNELS[0], use_resource=True)
    hidden = tf.nn.relu(tf.matmul(features, kernel))
    normed = tf1.layers.batch_normalization(hidden, momentum=0.0, epsilon=BN_EPSILON,
                                            training=training, name="bn")
    loss = tf.reduce_mean(tf.square(normed - labels))
    if not training:
        return tf.estimator.EstimatorSpec(mode, loss=loss, predictions={"y": normed})
    with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
        new_step = tf1.assign_add(tf1.train.get_or_create_global_step(), 1)
    train_op = kernel.assign(tf.gather(tf.constant(KERNELS), new_step % 2))
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op.op)


def _averaged_model_data():
    """Features, and labels that the averaged kernel with exact statistics fits."""
    x = DATA[0]
    hidden = np.maximum(x @ KERNELS.mean(axis=0), 0.0)
    return x, ((hidden - hidden.mean()) / hidden.std()).astype(np.float32)


def _labelled_input_fn(repeat):
    def fn():
        dataset = tf.data.Dataset.from_tensor_slices(_averaged_model_data()).batch(BATCH)
        return dataset.repeat() if repeat else dataset
    return fn


def test_recomputed_statistics_beat_the_averaged_ones(tmp_path):
    model_dir = tmp_path / "model"
    est = tf.estimator.Estimator(alternating_model_fn, str(model_dir), config=run_config())
    est.train(_labelled_input_fn(True), steps=8,
              hooks=[estimator_ema.StochasticWeightAveragingHook(1)])
    np.testing.assert_allclose(load(model_dir, "dense/kernel/" + SWA), KERNELS.mean(axis=0),
                               atol=1e-6)
    stale = estimator_ema.averaged_estimator(est, name=SWA).evaluate(_labelled_input_fn(False))
    path = estimator_ema.update_batch_norm(est, _labelled_input_fn(True), steps=4,
                                           output_dir=str(tmp_path / "bn"))
    fresh = est.evaluate(_labelled_input_fn(False), checkpoint_path=path)
    over_dir = tf.estimator.Estimator(alternating_model_fn, str(tmp_path / "bn"),
                                      config=run_config()).evaluate(_labelled_input_fn(False))
    # numpy: statistics as equal averages of the four batches' (biased) ones.
    x, y = _averaged_model_data()
    hidden = np.maximum(x.astype(np.float64) @ KERNELS.mean(axis=0), 0.0)
    batches = [hidden[i * BATCH:(i + 1) * BATCH] for i in range(4)]
    mean = np.mean([b.mean() for b in batches])
    variance = np.mean([b.var() for b in batches])
    expected = np.mean(((hidden - mean) / np.sqrt(variance + BN_EPSILON) - y) ** 2)
    np.testing.assert_allclose(fresh["loss"], expected, rtol=1e-4)
    assert over_dir["loss"] == fresh["loss"]
    assert fresh["loss"] * 4 < stale["loss"]


def test_input_shorter_than_steps_averages_what_there_is(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="estimator_ema")
    model_dir = tmp_path / "model"
    est = bn_estimator(model_dir, "v1")
    est.train(input_fn, steps=2, hooks=[estimator_ema.StochasticWeightAveragingHook(1)])

    def one_pass():
        return tf.data.Dataset.from_tensor_slices(DATA).batch(BATCH)

    path = estimator_ema.update_batch_norm(est, one_pass, steps=10,
                                           output_dir=str(tmp_path / "bn"))
    assert any("ran out after 4 of 10 batches" in r.getMessage() for r in caplog.records)
    hidden = DATA[0].astype(np.float64) @ load(path, "dense/kernel") + load(path, "dense/bias")
    np.testing.assert_allclose(load(path, "bn/moving_mean"), hidden.mean(axis=0), atol=1e-5)


def live_and_frozen_model_fn(features, labels, mode):
    """Batch norm on the features, then a second one frozen in inference mode."""
    training = mode == tf.estimator.ModeKeys.TRAIN
    normed = tf1.layers.batch_normalization(features, training=training, name="live")
    normed = tf1.layers.batch_normalization(normed, training=False, name="frozen")
    w = tf1.get_variable("w", [3, 1], initializer=tf1.zeros_initializer())
    loss = tf.reduce_mean(tf.square(tf.matmul(normed, w) - labels))
    step = tf1.train.get_or_create_global_step()
    with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
        train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
    # A Saver made in the model_fn (for some other use) adds restore ops that
    # write every variable.
    tf1.train.Saver(name="user_saver")
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def test_frozen_layer_keeps_its_statistics(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="estimator_ema")
    model_dir = tmp_path / "model"
    est = tf.estimator.Estimator(live_and_frozen_model_fn, str(model_dir), config=run_config())
    est.train(input_fn, steps=3, hooks=[estimator_ema.StochasticWeightAveragingHook(1)])
    path = estimator_ema.update_batch_norm(est, input_fn, steps=4,
                                           output_dir=str(tmp_path / "bn"))
    assert any("no update in TRAIN mode for ['frozen/moving_mean', 'frozen/moving_variance']"
               in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(load(path, "frozen/moving_variance"),
                                  load(model_dir, "frozen/moving_variance/" + SWA))
    np.testing.assert_allclose(load(path, "live/moving_mean"), DATA[0].mean(axis=0),
                               atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A BN model trained with SWA, and a linear model trained without."""
    root = tmp_path_factory.mktemp("trained")
    bn = bn_estimator(root / "bn", "v1")
    bn.train(input_fn, steps=2, hooks=[estimator_ema.StochasticWeightAveragingHook(1)])
    linear = tf.estimator.Estimator(linear_model_fn, str(root / "linear"), config=run_config(),
                                    params={})
    linear.train(input_fn, steps=2, hooks=[estimator_ema.StochasticWeightAveragingHook(1)])
    plain = bn_estimator(root / "plain", "v1")
    plain.train(input_fn, steps=1)
    return {"bn": bn, "linear": linear, "plain": plain}


def _empty_input_fn():
    return tf.data.Dataset.from_tensor_slices(DATA).batch(BATCH).take(0)


@pytest.mark.parametrize("which, kwargs, error, message", [
    ("bn", {"steps": 0}, ValueError, r"'steps' must be a positive int \(got 0\)\."),
    ("bn", {"steps": 2.5}, TypeError, r"'steps' must be a positive int \(got 2.5\)\."),
    ("bn", {"steps": 1, "name": "a/b"}, ValueError, r"'name' must be a non-empty string"),
    ("bn", {"steps": 1, "output_dir": 3}, TypeError,
     r"'output_dir' must be a directory path \(got 3\)\."),
    ("bn", {"steps": 1, "output_dir": "MODEL_DIR"}, ValueError,
     r"'output_dir' must not be the source model_dir or checkpoint directory, which "
     r"update_batch_norm never writes \(got '.*'\)\."),
    ("bn", {"steps": 1, "checkpoint_path": "/nonexistent/ckpt"}, ValueError,
     r"'checkpoint_path' is neither a checkpoint nor a model_dir \(got '/nonexistent/ckpt'\)"),
    ("bn", {"steps": 1, "name": "ExponentialMovingAverage"}, ValueError,
     r"has no averages named 'ExponentialMovingAverage' for this model's variables\."),
    ("plain", {"steps": 1}, ValueError,
     r"has no averages named 'StochasticWeightAverage' for this model's variables\."),
    ("linear", {"steps": 1}, ValueError,
     r"update_batch_norm found no batch-norm statistics that the model_fn updates in TRAIN "
     r"mode \(candidates: \[\]\)\."),
    ("bn", {"steps": 1, "input_fn": _empty_input_fn}, ValueError,
     r"update_batch_norm: 'input_fn' gave no batch\."),
    ("bn", {"steps": 1, "input_fn": "data"}, TypeError,
     r"'input_fn' must be callable \(got 'data'\)\."),
], ids=["steps-zero", "steps-float", "name", "output_dir-type", "output_dir-source",
        "checkpoint_path", "no-such-average", "trained-without-swa", "no-batch-norm",
        "empty-input", "input_fn-type"])
def test_bad_input(trained, tmp_path, which, kwargs, error, message):
    est = trained[which]
    kwargs = dict(kwargs)
    if kwargs.get("output_dir") == "MODEL_DIR":
        kwargs["output_dir"] = est.model_dir
    kwargs.setdefault("output_dir", str(tmp_path / "out"))
    input_fn_ = kwargs.pop("input_fn", input_fn)
    before = snapshot(est.model_dir)
    with pytest.raises(error, match=message):
        estimator_ema.update_batch_norm(est, input_fn_, **kwargs)
    assert snapshot(est.model_dir) == before
    assert not os.path.exists(str(tmp_path / "out"))


@pytest.mark.usefixtures("slim_compatible")
def test_zero_debiased_moving_mean_is_refused(tmp_path):
    est = bn_estimator(tmp_path / "model", "slim-zero-debias")
    est.train(input_fn, steps=1, hooks=[estimator_ema.StochasticWeightAveragingHook(1)])
    with pytest.raises(ValueError, match=r"update_batch_norm cannot find the batch statistic "
                                         r"in .*, the update of bn/moving_mean: it supports "
                                         r"moving averages 'var - \(var - value\) \* "
                                         r"\(1 - momentum\)'"):
        estimator_ema.update_batch_norm(est, input_fn, steps=1,
                                        output_dir=str(tmp_path / "out"))
    assert not os.path.exists(str(tmp_path / "out"))


def test_not_an_estimator():
    with pytest.raises(TypeError, match=r"'estimator' must be a tf.estimator.Estimator or a "
                                        r"tf.compat.v1.estimator.Estimator \(got 'dir'\)\."):
        estimator_ema.update_batch_norm("dir", input_fn, steps=1)
