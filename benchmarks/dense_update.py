"""Time of one dense averaging update alone, per session run.

The averages of an MLP's variables (`--layers` kernels of `--width` x
`--width` and their biases), updated by the package's `ExponentialMovingAverager`
(the op the hook and `with_ema` run after each step) or by stock
`tf.compat.v1.train.ExponentialMovingAverage.apply`, each in its own graph and
session, with no training step: what the update itself costs. Variants take
turns of `--steps` runs in rotating order over `--rounds` rounds; the table
gives the median microseconds per run over rounds, the quartiles, and the
median per-round ratio to stock.

    python benchmarks/dense_update.py [--rounds 41] [--steps 50] [--reference]
                                      [--baseline DIR] [--json out.json]

`--reference` makes reference variables on TF 2 too (`use_resource=False`);
TF 1.15 makes them anyway. `--baseline DIR` adds `ours@baseline`, the same
update from the package in the source checkout DIR (see `throughput.py`).
"""

import argparse
import json
import statistics
import time

import numpy as np
import tensorflow as tf

import estimator_ema._ema  # noqa: F401 (attributes of the installed package)
import estimator_ema._options  # noqa: F401
from throughput import BASELINE, PACKAGES, load_baseline, quartiles

tf1 = tf.compat.v1
DECAY = 0.999


def build(variant, layers, width, use_resource):
    """(session, update op) of one variant."""
    name, _, suffix = variant.partition("@")
    graph = tf.Graph()
    with graph.as_default():
        tf1.train.get_or_create_global_step()
        rng = np.random.RandomState(0)
        weights = []
        for i in range(layers):
            for shape in ([width, width], [width]):
                weights.append(tf1.get_variable(
                    "v%d_%d" % (i, len(shape)), use_resource=use_resource,
                    initializer=rng.randn(*shape).astype(np.float32)))
        if name == "stock":
            update = tf1.train.ExponentialMovingAverage(
                DECAY, num_updates=tf1.train.get_global_step()).apply(weights)
        else:
            package = PACKAGES["@" + suffix if suffix else ""]
            # A checkout from before the averagers had modules of their own
            # has it in _averaging.
            module = getattr(package, "_ema", None) or package._averaging
            averager = module.ExponentialMovingAverager(
                package._options.EmaOptions(DECAY), graph)
            update = averager.update()
        session = tf1.Session(graph=graph)
        session.run(tf1.global_variables_initializer())
    return session, update


def seconds_per_run(session, update, steps):
    start = time.perf_counter()
    for _ in range(steps):
        session.run(update)
    return (time.perf_counter() - start) / steps


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reference", action="store_true",
                        help="reference variables on TF 2 too (use_resource=False)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also time the update of the package in this source checkout")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    variants = ["stock", "ours"]
    if args.baseline:
        load_baseline(args.baseline)
        variants.append("ours" + BASELINE)
    use_resource = False if args.reference else None
    built = {v: build(v, args.layers, args.width, use_resource) for v in variants}
    for session, update in built.values():
        seconds_per_run(session, update, args.steps)  # untimed
    per_round = {v: [] for v in variants}
    for r in range(args.rounds):
        for v in variants[r % len(variants):] + variants[:r % len(variants)]:
            per_round[v].append(seconds_per_run(*built[v], args.steps) * 1e6)
    for session, _ in built.values():
        session.close()
    results = {}
    print("%d x (%d x %d + %d) float32, %s variables, %d rounds x %d runs (TF %s)" % (
        args.layers, args.width, args.width, args.width,
        "reference" if use_resource is False or tf.__version__.startswith("1.") else "resource",
        args.rounds, args.steps, tf.__version__))
    print("  %-16s %10s %16s %14s" % ("variant", "us/run", "quartiles", "vs stock"))
    for v in variants:
        ratios = [a / b for a, b in zip(per_round[v], per_round["stock"])]
        results[v] = {"us_per_run": statistics.median(per_round[v]),
                      "us_quartiles": quartiles(per_round[v]),
                      "time_ratio_to_stock": statistics.median(ratios),
                      "rounds_us_per_run": per_round[v]}
        print("  %-16s %10.0f %7.0f-%-8.0f %14.3f" % (
            v, results[v]["us_per_run"], results[v]["us_quartiles"][0],
            results[v]["us_quartiles"][1], results[v]["time_ratio_to_stock"]))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"tensorflow": tf.__version__, "args": vars(args), "results": results},
                      handle, indent=1)


if __name__ == "__main__":
    main()
