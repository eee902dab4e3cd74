"""Models whose code is not the user's: TensorFlow's canned Estimators (v1 and
v2) with `with_ema(estimator)` and the hook, Keras `model_to_estimator` with
`with_ema(estimator)`, and a tf_slim ResNet with `with_ema`.

Their optimizers (Adagrad, Ftrl, Momentum; Keras ones) and batch norms have no
numpy oracle here, so a SessionRunHook records every averaged variable after
each step and the oracle averages that trajectory.
"""

import numpy as np
import pytest
import tensorflow as tf

import estimator_ema
from conftest import DATA, EMA, IS_TF1, TF_VERSION, ema_oracle, keras_sgd, load, run_config, tf1
from conftest import input_fn as linear_input_fn

RNG = np.random.RandomState(0)
X = RNG.randn(32, 3).astype(np.float32)
C = RNG.randint(0, 4, 32).astype(np.int64)
Y = ((X[:, 0] + (C == 2)) > 0.5).astype(np.int64)

NUMERIC = tf.feature_column.numeric_column("x", shape=(3,))
CATEGORICAL = tf.feature_column.categorical_column_with_identity("c", 4)
STEPS = 6
DECAY = 0.8
# The last step's checkpoint is written by the step's own run of CheckpointSaverHook
# (not by its end()), so an average that lands after that run is caught.
CONFIG = run_config(save_checkpoints_steps=3)


def input_fn():
    return tf.data.Dataset.from_tensor_slices(({"x": X, "c": C}, Y)).batch(8).repeat()


def predict_input_fn():
    return tf.data.Dataset.from_tensor_slices({"x": X, "c": C}).batch(8)


def serving_input_fn():
    spec = tf.feature_column.make_parse_example_spec([NUMERIC, CATEGORICAL])
    return tf.estimator.export.build_parsing_serving_input_receiver_fn(spec)()


# TF 1.15 has the v2 canned Estimators (Keras optimizers) under tf.compat.v2.
FLAVOURS = {"v1": tf1.estimator, "v2": tf.compat.v2.estimator}

CANNED = {
    "dnn": lambda ns, model_dir: ns.DNNClassifier(
        hidden_units=[4], feature_columns=[NUMERIC], model_dir=model_dir, config=CONFIG),
    "linear": lambda ns, model_dir: ns.LinearClassifier(
        feature_columns=[CATEGORICAL, NUMERIC], model_dir=model_dir, config=CONFIG),
    "combined": lambda ns, model_dir: ns.DNNLinearCombinedClassifier(
        linear_feature_columns=[CATEGORICAL], dnn_feature_columns=[NUMERIC],
        dnn_hidden_units=[4], model_dir=model_dir, config=CONFIG),
}
CASES = [(kind, flavour) for kind in sorted(CANNED) for flavour in sorted(FLAVOURS)]


def canned(kind, flavour, model_dir):
    return CANNED[kind](FLAVOURS[flavour], str(model_dir))


def checkpoint_name(var):
    """The name a Saver gives `var`: a partition is saved under the full name."""
    info = getattr(var, "_save_slice_info", None)
    return info.full_name if info else var.op.name


class Recorder(tf1.train.SessionRunHook):
    """Records every averaged variable as the session starts and after each step."""

    def begin(self):
        self.variables = tf1.get_collection(tf1.GraphKeys.MOVING_AVERAGE_VARIABLES)
        self.names = [checkpoint_name(v) for v in self.variables]
        self.trajectory = []

    def after_create_session(self, session, coord):
        self.trajectory.append(session.run(self.variables))

    def after_run(self, run_context, run_values):
        self.trajectory.append(run_context.session.run(self.variables))


def average_key(model_dir, name):
    """The checkpoint key of `name`'s average: under the full name, also for the
    v1 DNN and linear models' partitioned variables (one `part_0` each), sliced
    like the variable."""
    return name + "/" + EMA


def assert_averages_match_the_recorded_weights(model_dir, recorder):
    assert len(recorder.trajectory) == STEPS + 1
    assert len(recorder.names) >= 3
    expected = ema_oracle(recorder.trajectory, DECAY)
    for name, value, average in zip(recorder.names, recorder.trajectory[-1], expected):
        np.testing.assert_allclose(load(model_dir, name), value, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(load(model_dir, average_key(model_dir, name)), average,
                                   atol=1e-5, err_msg=name)


def logits(est):
    return np.concatenate([p["logits"][None] for p in est.predict(predict_input_fn)])


@pytest.mark.parametrize("kind, flavour", CASES)
def test_with_ema_of_a_canned_estimator(model_dir, tmp_path, kind, flavour):
    est = canned(kind, flavour, model_dir)
    decorated = estimator_ema.with_ema(est, decay=DECAY)
    recorder = Recorder()
    decorated.train(input_fn, steps=STEPS, hooks=[recorder])
    assert_averages_match_the_recorded_weights(model_dir, recorder)

    # The original Estimator predicts with the raw weights.
    assert np.abs(logits(decorated) - logits(est)).max() > 1e-4

    export_dir = decorated.export_saved_model(str(tmp_path / "export"), serving_input_fn)
    variables = export_dir.decode() + "/variables/variables"
    assert not [n for n, _ in tf.train.list_variables(variables) if EMA in n]
    for name in recorder.names:
        np.testing.assert_array_equal(load(variables, name),
                                      load(model_dir, average_key(model_dir, name)))


@pytest.mark.parametrize("kind, flavour", CASES)
def test_the_hook_on_a_canned_estimator(model_dir, tmp_path, kind, flavour):
    recorder = Recorder()
    hook = estimator_ema.ExponentialMovingAverageHook(DECAY)
    est = canned(kind, flavour, model_dir)
    est.train(input_fn, steps=STEPS, hooks=[hook, recorder])
    assert_averages_match_the_recorded_weights(model_dir, recorder)

    # averaged_estimator, the same canned Estimator on the rewritten checkpoint and
    # the SavedModel all hold the averages, and predict otherwise than the raw weights.
    averaged = logits(estimator_ema.averaged_estimator(est))
    assert np.abs(averaged - logits(est)).max() > 1e-4
    rewritten = estimator_ema.write_averaged_checkpoint(
        str(model_dir), str(tmp_path / "rewritten" / "model.ckpt"))
    np.testing.assert_allclose(logits(canned(kind, flavour, tmp_path / "rewritten")), averaged,
                               atol=1e-5)
    export_dir = estimator_ema.export_saved_model(est, str(tmp_path / "export"),
                                                  serving_input_fn)
    variables = export_dir.decode() + "/variables/variables"
    for name in recorder.names:
        np.testing.assert_array_equal(load(variables, name), load(rewritten, name))


def keras_bn_estimator(model_dir, **kwargs):
    model = tf.keras.Sequential([tf.keras.layers.Dense(4, input_shape=(3,), name="dense"),
                                 tf.keras.layers.BatchNormalization(momentum=0.9, name="bn"),
                                 tf.keras.layers.Dense(1, name="out")])
    model.compile(optimizer=keras_sgd(0.1), loss="mse")
    return tf.keras.estimator.model_to_estimator(keras_model=model, model_dir=str(model_dir),
                                                 config=CONFIG, **kwargs)


def test_with_ema_of_a_keras_model_with_batch_norm(model_dir):
    # TF 2's default object-based checkpoints would drop the averages.
    est = keras_bn_estimator(model_dir, **({} if IS_TF1 else {"checkpoint_format": "saver"}))
    decorated = estimator_ema.with_ema(est, decay=DECAY)
    recorder = Recorder()
    decorated.train(linear_input_fn, steps=STEPS, hooks=[recorder])
    assert {"bn/moving_mean", "bn/moving_variance", "dense/kernel"} <= set(recorder.names)
    assert_averages_match_the_recorded_weights(model_dir, recorder)

    def predict_fn():
        return tf.data.Dataset.from_tensor_slices(DATA[0]).batch(8)

    averaged = np.stack([p["out"] for p in decorated.predict(predict_fn)])
    raw = np.stack([p["out"] for p in est.predict(predict_fn)])
    assert np.abs(averaged - raw).max() > 1e-4


@pytest.mark.skipif(IS_TF1, reason="TF 1.15's model_to_estimator writes name-based checkpoints")
def test_with_ema_refuses_keras_object_based_checkpoints(model_dir):
    decorated = estimator_ema.with_ema(keras_bn_estimator(model_dir))
    with pytest.raises(ValueError, match=r"The model_fn's Scaffold has its own Saver, which would "
                                         r"not save the averages; .*model_to_estimator does "
                                         r"with checkpoint_format='saver'"):
        decorated.train(linear_input_fn, steps=1)


IMAGES = RNG.randn(16, 8, 8, 3).astype(np.float32)
IMAGE_LABELS = RNG.randint(0, 3, 16).astype(np.int64)


def resnet_model_fn(features, labels, mode):
    """A one-unit tf_slim ResNet v2 (pre-activation batch norms, bottleneck,
    projection shortcut) on 8x8 images, trained as slim's scripts train it."""
    import tf_slim as slim
    from tf_slim.nets import resnet_v2

    blocks = [resnet_v2.resnet_v2_block("block1", base_depth=2, num_units=1, stride=1)]
    with slim.arg_scope(resnet_v2.resnet_arg_scope()):
        logits, _ = resnet_v2.resnet_v2(
            features, blocks, num_classes=3, is_training=mode == tf.estimator.ModeKeys.TRAIN,
            include_root_block=False, scope="resnet")
    logits = tf.squeeze(logits, [1, 2])
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"logits": logits})
    loss = tf1.losses.sparse_softmax_cross_entropy(labels, logits)
    train_op = slim.learning.create_train_op(loss, tf1.train.MomentumOptimizer(0.1, 0.9))
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


@pytest.mark.usefixtures("slim_compatible")
@pytest.mark.skipif(TF_VERSION >= (2, 13), reason="tf_slim's batch_norm on 4-D inputs builds "
                                       "tf.compat.v1.layers.BatchNormalization, which TF 2.13 "
                                       "and 2.14 load from keras.legacy_tf_layers, 2.15 from "
                                       "tf_keras.legacy_tf_layers, modules no release has")
def test_with_ema_of_a_tf_slim_resnet(model_dir):
    def images_input_fn():
        return tf.data.Dataset.from_tensor_slices((IMAGES, IMAGE_LABELS)).batch(8).repeat()

    def predict_fn():
        return tf.data.Dataset.from_tensor_slices(IMAGES).batch(8)

    recorder = Recorder()
    est = tf.estimator.Estimator(estimator_ema.with_ema(resnet_model_fn, decay=DECAY),
                                 str(model_dir), config=CONFIG)
    est.train(images_input_fn, steps=STEPS, hooks=[recorder])
    statistics = [n for n in recorder.names if n.endswith(("moving_mean", "moving_variance"))]
    assert len(statistics) == 8  # preact, conv1, conv2 and postnorm batch norms
    assert_averages_match_the_recorded_weights(model_dir, recorder)

    raw = estimator_ema.with_ema(resnet_model_fn, evaluate_with="weights")
    raw = tf.estimator.Estimator(raw, str(model_dir), config=CONFIG)
    averaged = np.stack([p["logits"] for p in est.predict(predict_fn)])
    assert np.abs(averaged - np.stack([p["logits"] for p in raw.predict(predict_fn)])).max() > 1e-4
