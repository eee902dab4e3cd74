"""Stochastic weight averaging with a cyclic learning rate, through Estimator.

Trains a small MLP on a noisy regression problem made in code: first with a
moderate learning rate, then, from `--swa-start`, with a cyclic one that
restarts high and decays to low over every `--cycle` steps. The weights at
the end of each cycle (lowest learning rate) enter the SWA mean
(`start_step` is the end of the first cycle, `average_period` the cycle
length). The final raw weights and the SWA weights are then evaluated on
held-out data.

    python examples/06_swa_cyclic_lr.py [--steps 3000] [--cycle 50] [--model-dir DIR]

Runs offline in well under a minute on two CPU cores. `--high-lr 0.1
--low-lr 0.1` makes the learning rate constant after `--swa-start` (the
other schedule of the SWA paper); the final weights are then noisier and
the gap wider.
"""

import argparse
import os
import random
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import estimator_ema  # noqa: E402

tf1 = tf.compat.v1
FEATURES = 20
HIDDEN = 32
NOISE = 1.0


def make_data(rows, seed):
    """y = tanh(x @ a) @ b + noise, with a fixed a and b."""
    true = np.random.RandomState(1234)
    a = true.randn(FEATURES, HIDDEN) / np.sqrt(FEATURES)
    b = 2.0 * true.randn(HIDDEN, 1) / np.sqrt(HIDDEN)
    rng = np.random.RandomState(seed)
    x = rng.randn(rows, FEATURES)
    y = np.tanh(x @ a) @ b + NOISE * rng.randn(rows, 1)
    return x.astype(np.float32), y.astype(np.float32)


def learning_rate(step, params):
    """`base` before `swa_start`; then, in every cycle of `cycle` steps, a
    linear decay from `high` to `low` (reached by the cycle's last step)."""
    step = tf.cast(step, tf.float32)
    position = tf.math.floormod(step - params["swa_start"], params["cycle"])
    cyclic = params["high"] - (params["high"] - params["low"]) * position / (params["cycle"] - 1)
    return tf1.where(step < params["swa_start"], params["base"], cyclic)


def model_fn(features, labels, mode, params):
    # Seeded initializers: op seeds drawn from the graph can differ between runs.
    hidden = tf1.layers.dense(features, HIDDEN, activation=tf.nn.tanh, name="hidden",
                              kernel_initializer=tf1.glorot_uniform_initializer(seed=1))
    predictions = tf1.layers.dense(hidden, 1, name="output",
                                   kernel_initializer=tf1.glorot_uniform_initializer(seed=2))
    if mode == tf.estimator.ModeKeys.PREDICT:
        return tf.estimator.EstimatorSpec(mode, predictions={"y": predictions})
    loss = tf1.losses.mean_squared_error(labels, predictions)
    step = tf1.train.get_or_create_global_step()
    optimizer = tf1.train.GradientDescentOptimizer(learning_rate(step, params))
    train_op = optimizer.minimize(loss, global_step=step)
    return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)


def input_fn(data, batch_size, train):
    def fn():
        dataset = tf.data.Dataset.from_tensor_slices(data)
        if train:
            dataset = dataset.shuffle(len(data[0]), seed=0).repeat()
        return dataset.batch(batch_size)
    return fn


def main(argv=None):
    random.seed(0)  # TF 2's Keras layers seed their initializers from Python's random
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--swa-start", type=int, default=1000,
                        help="step from which the learning rate is cyclic")
    parser.add_argument("--cycle", type=int, default=50, help="cycle length in steps")
    parser.add_argument("--base-lr", type=float, default=0.05,
                        help="learning rate before --swa-start")
    parser.add_argument("--high-lr", type=float, default=0.1,
                        help="learning rate at the start of each cycle")
    parser.add_argument("--low-lr", type=float, default=0.005,
                        help="learning rate at the end of each cycle")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model-dir", default=None)
    args = parser.parse_args(argv)
    model_dir = args.model_dir or tempfile.mkdtemp(prefix="swa-cyclic-lr-")
    params = {"base": args.base_lr, "high": args.high_lr, "low": args.low_lr,
              "swa_start": args.swa_start, "cycle": args.cycle}
    train, held_out = make_data(2000, seed=0), make_data(4000, seed=1)

    config = tf.estimator.RunConfig(tf_random_seed=0, save_summary_steps=100,
                                    log_step_count_steps=None)
    estimator = tf.estimator.Estimator(model_fn, model_dir, config=config, params=params)
    # The end of the first cycle is the first entry; then the end of every cycle.
    hook = estimator_ema.StochasticWeightAveragingHook(
        start_step=args.swa_start + args.cycle, average_period=args.cycle)
    print("Training %d steps: learning rate %g, then from step %d cycles of %d steps "
          "from %g down to %g; SWA of the weights at the end of each cycle."
          % (args.steps, params["base"], args.swa_start, args.cycle, params["high"],
             params["low"]))
    sys.stdout.flush()
    estimator.train(input_fn(train, args.batch_size, train=True), steps=args.steps, hooks=[hook])

    count = tf.train.load_variable(model_dir, "StochasticWeightAverage/count")
    evaluate = input_fn(held_out, 1000, train=False)
    raw = estimator.evaluate(evaluate, name="raw")["loss"]
    swa = estimator_ema.averaged_estimator(
        estimator, name="StochasticWeightAverage").evaluate(evaluate, name="swa")["loss"]
    print("\nHeld-out mean squared error (noise floor %.3f):" % NOISE ** 2)
    print("  %-26s %8.4f" % ("final weights", raw))
    print("  %-26s %8.4f" % ("SWA of %d cycle ends" % count, swa))
    if swa < raw:
        print("SWA beats the final weights by %.1f%%." % (100.0 * (raw - swa) / raw))
    else:
        print("SWA does not beat the final weights (%.1f%% worse)." % (100.0 * (swa - raw) / raw))
    print("model_dir: %s" % model_dir)
    return {"raw": float(raw), "swa": float(swa), "count": int(count)}


if __name__ == "__main__":
    main()
