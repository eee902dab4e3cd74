"""Add averaging to an existing model_fn with batch norm: one decorator line.

The decorated train op runs the optimizer, then the batch-norm statistics
updates (UPDATE_OPS, which this model_fn forgot to wire), then the average
update. evaluate() then reports the averaged weights and averaged batch-norm
statistics, with the raw weights' metrics beside them (evaluate_with="both").

    python examples/02_decorate_model_fn_batch_norm.py
"""

import random
import tempfile

import numpy as np
import tensorflow as tf

import estimator_ema

tf1 = tf.compat.v1


def make_data(rows, seed):
    rng = np.random.RandomState(seed)
    x = (3.0 + 2.0 * rng.randn(rows, 8)).astype(np.float32)
    y = (np.sin(x[:, :1]) + 0.3 * x[:, 1:2] + 0.5 * rng.randn(rows, 1)).astype(np.float32)
    return x, y


@estimator_ema.with_ema(decay=0.995, evaluate_with="both")
def model_fn(features, labels, mode, params):
    training = mode == tf.estimator.ModeKeys.TRAIN
    net = tf1.layers.batch_normalization(features, training=training, name="input_bn")
    net = tf1.layers.dense(net, params["hidden"], activation=tf.nn.relu, name="hidden")
    net = tf1.layers.batch_normalization(net, training=training, name="hidden_bn")
    predictions = tf1.layers.dense(net, 1, name="output")
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf1.losses.mean_squared_error(labels, predictions)
    train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def main():
    random.seed(0)  # TF 2's Keras layers seed their initializers from Python's random
    train, held_out = make_data(2000, 0), make_data(1000, 1)
    estimator = tf.estimator.Estimator(model_fn, tempfile.mkdtemp(), params={"hidden": 32},
                                       config=tf.estimator.RunConfig(tf_random_seed=0))
    estimator.train(
        lambda: tf.data.Dataset.from_tensor_slices(train).shuffle(2000, seed=0).repeat().batch(8),
        steps=3000)
    metrics = estimator.evaluate(
        lambda: tf.data.Dataset.from_tensor_slices(held_out).batch(500))
    print("held-out MSE: raw weights %.4f, averaged weights %.4f"
          % (metrics["raw_weights/loss"], metrics["loss"]))
    names = [name for name, _ in tf.train.list_variables(estimator.model_dir)]
    print("averaged batch-norm statistics:",
          sorted(n for n in names if "moving_" in n and n.endswith("ExponentialMovingAverage")))
    return metrics


if __name__ == "__main__":
    main()
