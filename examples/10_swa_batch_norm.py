"""SWA on a model with batch norm, then fresh batch-norm statistics.

The SWA weights are an average along the run; the batch-norm statistics
here are left out of it (`exclude`), as in PyTorch's SWA, so they are those of
the last weights, not of the averaged ones. `update_batch_norm` recomputes them with
the SWA weights over a few batches and writes a new checkpoint (the source
model_dir is left alone), as PyTorch's `update_bn` does.

    python examples/10_swa_batch_norm.py
"""

import random
import tempfile

import numpy as np
import tensorflow as tf

import estimator_ema

tf1 = tf.compat.v1
SWA = "StochasticWeightAverage"


def make_data(rows, seed):
    rng = np.random.RandomState(seed)
    x = (2.0 + 3.0 * rng.randn(rows, 8)).astype(np.float32)
    y = (np.tanh(x @ np.linspace(-0.3, 0.3, 8)[:, None]) + 0.3 * rng.randn(rows, 1))
    return x, y.astype(np.float32)


def model_fn(features, labels, mode):
    training = mode == tf.estimator.ModeKeys.TRAIN
    init = tf1.glorot_uniform_initializer(seed=0)
    hidden = tf1.layers.dense(features, 32, use_bias=False, kernel_initializer=init,
                              name="hidden")
    hidden = tf.nn.relu(tf1.layers.batch_normalization(hidden, momentum=0.5, training=training,
                                                        name="bn"))
    predictions = tf1.layers.dense(hidden, 1, kernel_initializer=init, name="output")
    loss = tf1.losses.mean_squared_error(labels, predictions)
    train_op = tf1.train.GradientDescentOptimizer(0.3).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def main():
    random.seed(0)  # TF 2's Keras layers seed their initializers from Python's random
    train, held_out = make_data(2000, 0), make_data(1000, 1)

    def train_input_fn():
        return tf.data.Dataset.from_tensor_slices(train).shuffle(2000, seed=0).repeat().batch(8)

    def eval_input_fn():
        return tf.data.Dataset.from_tensor_slices(held_out).batch(500)

    estimator = tf.estimator.Estimator(model_fn, tempfile.mkdtemp(),
                                       config=tf.estimator.RunConfig(tf_random_seed=0))
    swa = estimator_ema.StochasticWeightAveragingHook(start_step=300, average_period=10,
                                                      exclude="moving_(mean|variance)$")
    estimator.train(train_input_fn, steps=800, hooks=[swa])

    raw = estimator.evaluate(eval_input_fn, name="raw")["loss"]
    stale = estimator_ema.averaged_estimator(estimator, name=SWA).evaluate(
        eval_input_fn, name="swa_stale_bn")["loss"]
    path = estimator_ema.update_batch_norm(estimator, train_input_fn, steps=100,
                                           output_dir=tempfile.mkdtemp())
    fresh = estimator.evaluate(eval_input_fn, checkpoint_path=path, name="swa_fresh_bn")["loss"]
    print("SWA batch-norm statistics: stale %.4f, re-estimated %.4f" % (stale, fresh))
    print("held-out MSE: raw weights %.4f, averaged weights %.4f (SWA, fresh statistics)"
          % (raw, fresh))
    return raw, stale, fresh


if __name__ == "__main__":
    main()
