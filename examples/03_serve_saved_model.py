"""Serve the averages: export a SavedModel that holds them, load it, query it.

The plain `estimator.export_saved_model` of a hook-trained model serves the
raw weights; `estimator_ema.export_saved_model` serves the averages, under
the plain variable names, at the same size.

    python examples/03_serve_saved_model.py
"""

import random
import tempfile

import numpy as np
import tensorflow as tf

import estimator_ema

tf1 = tf.compat.v1


def make_data(rows, seed):
    rng = np.random.RandomState(seed)
    x = rng.randn(rows, 10).astype(np.float32)
    y = (x @ np.linspace(-1, 1, 10)[:, None] + rng.randn(rows, 1)).astype(np.float32)
    return x, y


def model_fn(features, labels, mode):
    x = features["x"] if isinstance(features, dict) else features
    predictions = tf1.layers.dense(x, 1, name="linear")
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf1.losses.mean_squared_error(labels, predictions)
    train_op = tf1.train.GradientDescentOptimizer(0.05).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def serving_input_receiver_fn():
    x = tf1.placeholder(tf.float32, [None, 10], name="x")
    return tf.estimator.export.ServingInputReceiver({"x": x}, {"x": x})


def serve(export_dir, x):
    """Queries the SavedModel's serving signature, as a serving system would."""
    export_dir = export_dir.decode() if isinstance(export_dir, bytes) else export_dir
    with tf1.Session(graph=tf.Graph()) as session:
        meta_graph = tf1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta_graph.signature_def["serving_default"]
        return session.run(signature.outputs["y"].name, {signature.inputs["x"].name: x})


def main():
    random.seed(0)  # TF 2's Keras layers seed their initializers from Python's random
    train, held_out = make_data(1000, 0), make_data(1000, 1)
    estimator = tf.estimator.Estimator(model_fn, tempfile.mkdtemp(),
                                       config=tf.estimator.RunConfig(tf_random_seed=0))
    estimator.train(
        lambda: tf.data.Dataset.from_tensor_slices(train).shuffle(1000, seed=0).repeat().batch(2),
        steps=500, hooks=[estimator_ema.ExponentialMovingAverageHook(decay=0.99)])
    exports = tempfile.mkdtemp()
    raw_dir = estimator.export_saved_model(exports, serving_input_receiver_fn)
    averaged_dir = estimator_ema.export_saved_model(estimator, exports,
                                                    serving_input_receiver_fn)
    x, y = held_out
    raw = np.mean((serve(raw_dir, x) - y) ** 2)
    averaged = np.mean((serve(averaged_dir, x) - y) ** 2)
    print("served held-out MSE: raw weights %.4f, averaged weights %.4f" % (raw, averaged))
    print("averaged SavedModel: %s" % averaged_dir.decode())
    return raw, averaged


if __name__ == "__main__":
    main()
