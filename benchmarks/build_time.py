"""Graph build time of the averaging for a model with many variables.

Builds, in a fresh graph each time, a model of `--variables` small variables
(4x4 kernels and 4-vectors) trained by plain SGD, and times what the package
adds: the averager (its shadow variables), the update joined to the step, and
all of `ExponentialMovingAverageHook.begin()` (shadows, the joined and the
separate update, summaries). The model's own build time is printed too, for
scale: it is what TensorFlow takes to create as many variables and ops.
Prints the median of `--repeats`.

  python benchmarks/build_time.py [--variables 1000] [--repeats 5] [--json out.json]
"""

import argparse
import json
import os
import platform
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import estimator_ema  # noqa: E402
from estimator_ema import _ema, _options  # noqa: E402

tf1 = tf.compat.v1


def model_fn(n_variables):
    """A model_fn with `n_variables` small variables, all trained by SGD."""

    def fn(features, labels, mode):
        loss = 0.0
        for i in range(n_variables // 2):
            kernel = tf1.get_variable("layer_%d/kernel" % i, [4, 4])
            bias = tf1.get_variable("layer_%d/bias" % i, [4])
            loss += tf.reduce_sum(tf.matmul(features, kernel) + bias)
        step = tf1.train.get_or_create_global_step()
        train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    return fn


def time_parts(n_variables):
    """Seconds to build the model, the averager (shadows), the update joined to
    the step, and all of the hook's begin(), in one graph each."""
    times = {}
    with tf.Graph().as_default() as graph:
        start = time.perf_counter()
        spec = model_fn(n_variables)(tf.ones([2, 4]), None, tf.estimator.ModeKeys.TRAIN)
        times["model"] = time.perf_counter() - start
        start = time.perf_counter()
        averager = _ema.ExponentialMovingAverager(_options.EmaOptions(0.999), graph)
        times["averager"] = time.perf_counter() - start
        start = time.perf_counter()
        averager.update(after=[spec.train_op])
        times["update"] = time.perf_counter() - start
    with tf.Graph().as_default() as graph:
        model_fn(n_variables)(tf.ones([2, 4]), None, tf.estimator.ModeKeys.TRAIN)
        tf1.add_to_collection(tf1.GraphKeys.SAVERS, tf1.train.Saver(sharded=True))
        before = len(graph.get_operations())
        start = time.perf_counter()
        estimator_ema.ExponentialMovingAverageHook(0.999).begin()
        times["hook_begin"] = time.perf_counter() - start
        times["hook_ops"] = len(graph.get_operations()) - before
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variables", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    tf1.logging.set_verbosity(tf1.logging.ERROR)
    runs = [time_parts(args.variables) for _ in range(args.repeats)]
    report = {"tensorflow": tf.__version__, "python": platform.python_version(),
              "variables": args.variables, "repeats": args.repeats}
    for key in runs[0]:
        report[key] = statistics.median(run[key] for run in runs)
    print("%d variables, TF %s, median of %d: model %.2f s; averager (shadows) %.2f s, "
          "update %.2f s (together %.2f s); hook begin() %.2f s, %d ops"
          % (args.variables, tf.__version__, args.repeats, report["model"],
             report["averager"], report["update"], report["averager"] + report["update"],
             report["hook_begin"], report["hook_ops"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
