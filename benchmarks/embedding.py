"""Training throughput of an embedding model with and without averaging, side by side.

A table of `--rows` x 16 looked up by 4 random ids per example (batch 256),
mean-pooled, a linear head, Adagrad (sparse row updates of the table). Each
variant trains its own copy in its own graph and session, built once; the
variants then take turns in rounds inside this one process, as in
`throughput.py`, and each round's steps/s is divided by the no-averaging
variant's of the same round. A turn is `--steps` timed steps (`--dense-steps`
for the variants that average every row, about 60 ms a step) after `--settle`
untimed ones: a dense variant's turn passes over every table, and the next
variant's first steps after it are slower.

Variants:

  none             no averaging
  stock            tf.compat.v1.train.ExponentialMovingAverage(0.999,
                   num_updates=global_step).apply(...) after the train op
                   (every row of the table, every step)
  hook_dense       ExponentialMovingAverageHook(0.999, lazy_rows=False)
  hook             ExponentialMovingAverageHook(0.999): lazy rows
  with_ema_dense   with_ema(decay=0.999, lazy_rows=False)
  with_ema         with_ema(decay=0.999): lazy rows

Usage:

  python benchmarks/embedding.py [--rows 1000000] [--rounds 21] [--variants ...]
                                 [--json out.json]
  python benchmarks/embedding.py --quick --json out.json     # smoke run, for CI
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import estimator_ema  # noqa: E402
from throughput import cpu_model, estimator_session, run_rounds  # noqa: E402

tf1 = tf.compat.v1
DECAY = 0.999
DIM, IDS, BATCH = 16, 4, 256
VARIANTS = ("none", "stock", "hook_dense", "hook", "with_ema_dense", "with_ema")


def embedding_model_fn(rows):
    def model_fn(features, labels, mode):
        table = tf1.get_variable("embedding/table", [rows, DIM],
                                 initializer=tf1.random_normal_initializer(stddev=0.1))
        head = tf1.get_variable("head/w", [DIM, 1], initializer=tf1.ones_initializer())
        pooled = tf.reduce_mean(tf.nn.embedding_lookup(table, features), axis=1)
        loss = tf.reduce_mean(tf.square(tf.matmul(pooled, head) - labels))
        step = tf1.train.get_or_create_global_step()
        train_op = tf1.train.AdagradOptimizer(0.1).minimize(loss, global_step=step)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    return model_fn


def build(variant, rows, model_dir):
    """(graph, MonitoredSession, train op) of one variant, ready to run."""
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        ids = tf.random.uniform([BATCH, IDS], 0, rows, dtype=tf.int64)
        labels = tf.random.normal([BATCH, 1])
        model_fn = embedding_model_fn(rows)
        if variant.startswith("with_ema"):
            model_fn = estimator_ema.with_ema(model_fn, decay=DECAY,
                                              lazy_rows=not variant.endswith("_dense"))
        spec = model_fn(ids, labels, tf.estimator.ModeKeys.TRAIN)
        train_op, hooks = spec.train_op, list(spec.training_hooks)
        if variant == "stock":
            ema = tf1.train.ExponentialMovingAverage(
                DECAY, num_updates=tf1.train.get_global_step())
            with tf.control_dependencies([train_op]):
                train_op = ema.apply(tf1.trainable_variables())
        elif variant.startswith("hook"):
            hooks.append(estimator_ema.ExponentialMovingAverageHook(
                DECAY, lazy_rows=not variant.endswith("_dense")))
        elif variant not in ("none", "with_ema", "with_ema_dense"):
            raise ValueError("unknown variant %r" % variant)
        # As Estimator.train does, before the hooks' begin().
        tf1.add_to_collection(tf1.GraphKeys.SAVERS, tf1.train.Saver(sharded=True,
                                                                    defer_build=True))
        session = estimator_session(spec, hooks, os.path.join(model_dir, variant))
    return graph, session, train_op


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=100, help="steps per variant per round")
    parser.add_argument("--dense-steps", type=int, default=5,
                        help="steps per round of the variants that average every row")
    parser.add_argument("--warmup", type=int, default=20,
                        help="untimed steps per variant before the rounds")
    parser.add_argument("--settle", type=int, default=30,
                        help="untimed steps at the start of each turn (1 for the dense "
                             "variants): a dense variant's turn, a pass over every table, "
                             "leaves the next variant's first steps slower")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10,000 rows, 2 rounds of 3 steps, for CI")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    tf1.logging.set_verbosity(tf1.logging.ERROR)
    variants = tuple(args.variants.split(","))
    if "none" not in variants:
        variants = ("none",) + variants
    if args.quick:
        args.rows, args.rounds, args.steps, args.warmup, args.settle = 10000, 2, 3, 2, 1
        args.dense_steps = 3
    model_dir = tempfile.mkdtemp(prefix="estimator-ema-embedding-")
    try:
        built = {v: [build(v, args.rows, model_dir)] for v in variants}
        dense = {v for v in variants if v == "stock" or v.endswith("_dense")}
        steps = {v: args.dense_steps if v in dense else args.steps for v in variants}
        settle = {v: min(args.settle, 1) if v in dense else args.settle for v in variants}
        results = run_rounds(built, variants, args.rounds, steps, args.warmup, settle)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    report = {"tensorflow": tf.__version__, "python": platform.python_version(),
              "cpu": cpu_model(), "cores": os.cpu_count(), "decay": DECAY, "rows": args.rows,
              "dim": DIM, "ids": IDS, "batch": BATCH, "rounds": args.rounds,
              "steps": steps, "settle": settle, "variants": results}
    print("%d x %d table, %d ids x batch %d, Adagrad, %d rounds x %d steps (dense: %d), after "
          "%d untimed (TF %s)" % (args.rows, DIM, IDS, BATCH, args.rounds, args.steps,
                                  args.dense_steps, args.settle, tf.__version__))
    print("  %-15s %10s %8s  %-15s" % ("variant", "steps/s", "ratio", "ratio quartiles"))
    for v in variants:
        r = results[v]
        print("  %-15s %10.1f %8.3f  %.3f-%.3f"
              % ((v, r["steps_per_s"], r["ratio"]) + r["ratio_quartiles"]))
    sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
