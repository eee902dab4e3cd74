"""Watch raw and averaged weights side by side while training.

train_and_evaluate evaluates every few hundred steps; evaluate_with="both"
reports the averages' loss as `loss` and the raw weights' as
`raw_weights/loss`, both in the eval directory that TensorBoard plots, next
to the decay and distance scalars the averaging writes during training.

    python examples/08_watch_raw_vs_averaged.py
    tensorboard --logdir <the model_dir it prints>
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


@estimator_ema.with_ema(decay=0.98, evaluate_with="both")
def model_fn(features, labels, mode):
    predictions = tf1.layers.dense(features, 1, name="linear")
    loss = tf1.losses.mean_squared_error(labels, predictions)
    train_op = tf1.train.GradientDescentOptimizer(0.05).minimize(
        loss, global_step=tf1.train.get_or_create_global_step())
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


class PrintEvaluation(tf.estimator.Exporter):
    """An 'exporter' that only prints each evaluation's raw vs averaged loss."""

    name = "print"

    def export(self, estimator, export_path, checkpoint_path, eval_result, is_the_final_export):
        print("step %5d: held-out MSE raw %.4f, averaged %.4f"
              % (eval_result["global_step"], eval_result["raw_weights/loss"],
                 eval_result["loss"]))


def main():
    random.seed(0)  # TF 2's Keras layers seed their initializers from Python's random
    train, held_out = make_data(2000, 0), make_data(1000, 1)
    model_dir = tempfile.mkdtemp()
    config = tf.estimator.RunConfig(tf_random_seed=0, save_checkpoints_steps=200,
                                    save_summary_steps=50)
    estimator = tf.estimator.Estimator(model_fn, model_dir, config=config)
    tf.estimator.train_and_evaluate(
        estimator,
        tf.estimator.TrainSpec(
            lambda: tf.data.Dataset.from_tensor_slices(train).shuffle(2000, seed=0)
            .repeat().batch(2), max_steps=1000),
        tf.estimator.EvalSpec(lambda: tf.data.Dataset.from_tensor_slices(held_out).batch(500),
                              steps=None, throttle_secs=0, exporters=[PrintEvaluation()]))
    print("TensorBoard: tensorboard --logdir %s" % model_dir)
    return model_dir


if __name__ == "__main__":
    main()
