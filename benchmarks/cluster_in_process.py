"""CPU time a training step costs on a parameter-server cluster whose servers
all run in this one process, with and without averaging, variants side by side.

`cluster_embedding.py` measures what users run, a process per task with
asynchronous workers; on a shared two-core machine its rounds vary by a fifth
from one to the next. Here the cluster is two ps and one worker, servers of
this process (`tf.distribute.Server`, talking gRPC on 127.0.0.1 as separate
processes would), and the model is that script's: a table of `--rows` x 16 in
two parts, one on each ps, looked up by 4 random ids per example (batch 256),
a dense head, Adagrad. Each variant is built once, in its own resource
container on the same servers, and trained by a MonitoredTrainingSession on
the worker; the variants then take turns in rounds (order rotated). A turn is
`--steps` timed steps after `--settle` untimed ones; its cost is the process's
CPU time (user and system) per step: the ps's work, the worker's, and the
transfers' between them alike. Each round's ratio is no averaging's cost over
the variant's (the throughput ratio of a CPU-bound cluster); the medians and
quartiles over the rounds are reported.

`--baseline DIR` adds `<variant>@baseline` variants built with the package of
the checkout `DIR` (see `throughput.py`), to measure a change side by side.

Variants:

  none      no averaging
  hook      ExponentialMovingAverageHook(0.999): lazy rows
  with_ema  with_ema(decay=0.999): lazy rows

Usage:

  python benchmarks/cluster_in_process.py [--rows 1000000] [--rounds 15]
                                          [--variants ...] [--baseline DIR]
                                          [--json out.json]
  python benchmarks/cluster_in_process.py --quick --json out.json   # smoke run
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

import throughput  # noqa: E402
from cluster_embedding import (BATCH, DECAY, IDS, _free_ports, _threads, model_fn_for,  # noqa: E402
                               quartiles)

tf1 = tf.compat.v1
VARIANTS = ("none", "hook", "with_ema")


def start_servers(threads):
    """(cluster spec, the worker's server): two ps and a worker in this process."""
    addresses = ["127.0.0.1:%d" % port for port in _free_ports(3)]
    spec = tf1.train.ClusterSpec({"ps": addresses[:2], "worker": addresses[2:]})
    config = session_config(threads)
    servers = [tf1.train.Server(spec, job, index, config=config)
               for job, index in (("ps", 0), ("ps", 1), ("worker", 0))]
    return spec, servers[-1]


def session_config(threads):
    return tf1.ConfigProto(inter_op_parallelism_threads=threads[0],
                           intra_op_parallelism_threads=threads[1])


def build(variant, container, rows, spec, worker, threads):
    """(MonitoredTrainingSession, train op) of `variant`, its variables in
    `container` (letters and digits: TF 1.15 refuses some other characters)."""
    name, at, copy = variant.partition("@")
    package = throughput.PACKAGES[at + copy]
    graph = tf.Graph()
    with graph.as_default(), graph.container(container), tf1.device(
            tf1.train.replica_device_setter(cluster=spec, worker_device="/job:worker/task:0")):
        ids = tf.random.uniform([BATCH, IDS], 0, rows, dtype=tf.int64)
        labels = tf.random.normal([BATCH, 1])
        model_fn = model_fn_for("none", rows, 2)
        if name == "with_ema":
            model_fn = package.with_ema(model_fn, decay=DECAY)
        spec_ = model_fn(ids, labels, tf.estimator.ModeKeys.TRAIN)
        hooks = list(spec_.training_hooks)
        if name == "hook":
            hooks.append(package.ExponentialMovingAverageHook(DECAY))
        elif name not in ("none", "with_ema"):
            raise ValueError("unknown variant %r" % variant)
        # As Estimator.train does, before the hooks' begin().
        graph.add_to_collection(tf1.GraphKeys.SAVERS,
                                tf1.train.Saver(sharded=True, defer_build=True))
        session = tf1.train.MonitoredTrainingSession(
            master=worker.target, is_chief=True, scaffold=spec_.scaffold, hooks=hooks,
            save_checkpoint_secs=None, save_summaries_steps=None, save_summaries_secs=None,
            log_step_count_steps=None, config=session_config(threads))
    return session, spec_.train_op


def cpu_ms_per_step(session, train_op, steps, settle):
    for _ in range(settle):
        session.run(train_op)
    start = time.process_time()
    for _ in range(steps):
        session.run(train_op)
    return 1000.0 * (time.process_time() - start) / steps


def measure(variants, args):
    spec, worker = start_servers(args.threads)
    built = {v: build(v, "variant%d" % i, args.rows, spec, worker, args.threads)
             for i, v in enumerate(variants)}
    costs = {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            costs[v].append(cpu_ms_per_step(*built[v], steps=args.steps, settle=args.settle))
    results = {}
    for v in variants:
        ratios = [a / b for a, b in zip(costs["none"], costs[v])]
        results[v] = {"cpu_ms_per_step": statistics.median(costs[v]),
                      "ratio": statistics.median(ratios), "ratio_quartiles": quartiles(ratios),
                      "rounds_cpu_ms_per_step": costs[v]}
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000000)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=1000, help="timed steps a turn")
    parser.add_argument("--settle", type=int, default=30, help="untimed steps before them")
    parser.add_argument("--threads", default="2,1", type=_threads,
                        help="inter-op,intra-op threads of every server and session")
    parser.add_argument("--baseline", metavar="DIR",
                        help="a checkout whose package builds the <variant>@baseline variants")
    parser.add_argument("--quick", action="store_true", help="a smoke run (tests)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.rounds, args.steps, args.settle = 1000, 2, 20, 5
    variants = [v for v in args.variants.split(",") if v]
    if "none" not in variants:
        variants.insert(0, "none")
    if args.baseline:
        throughput.load_baseline(args.baseline)
        variants += [v + throughput.BASELINE for v in variants if v != "none"]
    print("%d x 16 table over 2 ps, one worker, all in this process (TF %s); %d rounds of "
          "%d steps" % (args.rows, tf.__version__, args.rounds, args.steps))
    results = measure(variants, args)
    for v in variants:
        r = results[v]
        print("  %-18s %6.3f CPU ms a step   ratio %.3f (%.3f-%.3f)"
              % ((v, r["cpu_ms_per_step"], r["ratio"]) + tuple(r["ratio_quartiles"])))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": args.rows, "rounds": args.rounds, "steps": args.steps,
                       "tensorflow": tf.__version__, "python": platform.python_version(),
                       "cpu": throughput.cpu_model(), "variants": results}, handle, indent=1)


if __name__ == "__main__":
    code = 0
    try:
        main()
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # The servers cannot be stopped: leave without waiting for their threads.
    os._exit(code)
