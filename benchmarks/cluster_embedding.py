"""Global training throughput of an embedding table on a local parameter-server
cluster, with and without averaging, variants alternated.

Each run starts a cluster on 127.0.0.1, one process per task (2 ps, a chief, 2
workers: `--ps`, `--workers`), as Estimator's between-graph replication runs
it (`TF_CONFIG`, `tf.estimator.train_and_evaluate`). The model: a table of
`--rows` x 16 partitioned over the parameter servers (`fixed_size_partitioner`),
looked up by 4 random ids per example (batch 256, new ids every step),
mean-pooled, a linear head, Adagrad (sparse row updates of the table); every
task trains asynchronously. No checkpoints are written while it runs.

The chief reads the global step after each of its steps; after `--warmup`
seconds of training (of every task: the chief waits until the workers have
started) it counts the global steps over the next `--window` seconds, stops,
and reports their rate. Variants take turns in rounds, the order rotated each
round; each run's rate is divided by the no-averaging run's of the same
round: the medians and quartiles of those ratios are reported.

Every task runs TensorFlow with `--threads` inter-op and intra-op threads
(default 2 and 1; `0,0` for TensorFlow's defaults, a pool per core in each
process). Five processes share this machine's cores: with TensorFlow's
defaults their thread pools contend, and the rates said more about that than
about the work (adding 50 scalar ops and a wait on a ps to each step made the
cluster 1.3 times faster, round after round; with 2 and 1 threads the same
change costs 12%, as work should).

On a machine shared with other work the rates say as much about the other
work as about the variant, so the script also reports what each global step
costs: the CPU time (user and system, from /proc on Linux) that all the
cluster's processes spent over the window, divided by its global steps, and
as a ratio, no averaging's cost over the variant's (the throughput ratio a
CPU-bound cluster would have on a machine of its own), and how much of it
the parameter servers spent and how much the chief and workers: where a
variant's work runs.

Variants:

  none         no averaging
  stock        tf.compat.v1.train.ExponentialMovingAverage(0.999,
               num_updates=global_step).apply(...) after the apply (every row)
  hook_dense   ExponentialMovingAverageHook(0.999, lazy_rows=False)
  hook         ExponentialMovingAverageHook(0.999): lazy rows
  with_ema     with_ema(decay=0.999): lazy rows

Usage:

  python benchmarks/cluster_embedding.py [--rows 1000000,10000000] [--rounds 3]
                                         [--variants ...] [--threads 2,1]
                                         [--json out.json]
  python benchmarks/cluster_embedding.py --quick --json out.json   # smoke run
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

DECAY = 0.999
DIM, IDS, BATCH = 16, 4, 256
VARIANTS = ("none", "stock", "hook_dense", "hook", "with_ema")


def model_fn_for(variant, rows, ps):
    import tensorflow as tf
    import estimator_ema
    tf1 = tf.compat.v1

    def model_fn(features, labels, mode):
        table = tf1.get_variable("embedding/table", [rows, DIM],
                                 initializer=tf1.random_normal_initializer(stddev=0.1),
                                 partitioner=tf1.fixed_size_partitioner(ps))
        head = tf1.get_variable("head/w", [DIM, 1], initializer=tf1.ones_initializer())
        pooled = tf.reduce_mean(tf1.nn.embedding_lookup(table, features), axis=1)
        loss = tf.reduce_mean(tf.square(tf.matmul(pooled, head) - labels))
        step = tf1.train.get_or_create_global_step()
        optimizer = tf1.train.AdagradOptimizer(0.1)
        if variant != "stock":
            train_op = optimizer.minimize(loss, global_step=step)
            return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)
        apply = optimizer.minimize(loss)
        ema = tf1.train.ExponentialMovingAverage(DECAY, num_updates=step)
        with tf.control_dependencies([apply]):
            averaged = ema.apply(tf1.trainable_variables())
        with tf.control_dependencies([averaged]):
            train_op = tf1.assign_add(step, 1)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    if variant == "with_ema":
        return estimator_ema.with_ema(model_fn, decay=DECAY)
    return model_fn


def run_task(args):
    """One task of the cluster (TF_CONFIG set); the chief writes its report."""
    import logging
    import tensorflow as tf
    import estimator_ema
    tf1 = tf.compat.v1
    tf1.logging.set_verbosity(tf1.logging.ERROR)
    logger = logging.getLogger("estimator_ema")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.StreamHandler())
    # Estimator's own session config for the task (device filters and all), with
    # the threads set.
    session_config = tf.estimator.RunConfig().session_config
    session_config.inter_op_parallelism_threads = args.threads[0]
    session_config.intra_op_parallelism_threads = args.threads[1]
    config = tf.estimator.RunConfig(save_checkpoints_steps=None, save_checkpoints_secs=None,
                                    save_summary_steps=None, log_step_count_steps=10 ** 9,
                                    session_config=session_config)
    name = "%s%d" % (config.task_type, config.task_id)
    model_dir = args.model_dir

    def input_fn():
        def batch(_):
            return (tf.random.uniform([BATCH, IDS], 0, args.rows, dtype=tf.int64),
                    tf.random.normal([BATCH, 1]))
        return tf.data.Dataset.from_tensors(0).repeat().map(batch)

    class Window(tf1.train.SessionRunHook):
        """Every training task: says it has started. The chief: waits for the
        others, then counts global steps over the timed window and stops."""

        def begin(self):
            self._step = tf1.train.get_global_step()
            self._start = self._last = None

        def after_create_session(self, session, coord):
            open(os.path.join(model_dir, name + ".started"), "w").close()
            if not config.is_chief:
                return
            deadline = time.time() + 300
            while time.time() < deadline and not all(
                    os.path.exists(os.path.join(model_dir, "worker%d.started" % i))
                    for i in range(args.workers)):
                time.sleep(0.1)
            self._began = time.time()

        def before_run(self, run_context):
            return tf1.train.SessionRunArgs(self._step) if config.is_chief else None

        def after_run(self, run_context, run_values):
            if not config.is_chief:
                return
            now, step = time.time(), int(run_values.results)
            if self._last is not None and step < self._last:
                # Not a rate: a session was created again, from scratch.
                with open(os.path.join(model_dir, "report.json"), "w") as handle:
                    json.dump({"error": "the global step went back from %d to %d"
                               % (self._last, step)}, handle)
                run_context.request_stop()
                return
            self._last = step
            if self._start is None and now - self._began >= args.warmup:
                self._start = (now, step)
            elif self._start is not None and now - self._start[0] >= args.window:
                seconds, steps = now - self._start[0], step - self._start[1]
                with open(os.path.join(model_dir, "report.json"), "w") as handle:
                    json.dump({"steps": steps, "seconds": seconds, "start": self._start[0],
                               "end": now}, handle)
                run_context.request_stop()

    hooks = [Window()]
    if args.variant.startswith("hook"):
        hooks.insert(0, estimator_ema.ExponentialMovingAverageHook(
            DECAY, lazy_rows=args.variant == "hook"))
    estimator = tf.estimator.Estimator(model_fn_for(args.variant, args.rows, args.ps),
                                       model_dir, config=config)
    tf.estimator.train_and_evaluate(
        estimator, tf.estimator.TrainSpec(input_fn, max_steps=10 ** 9, hooks=hooks),
        tf.estimator.EvalSpec(input_fn, steps=1))


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("", 0))  # TensorFlow's servers bind every interface
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _cpu_seconds(pid):
    """The CPU time (user and system) process `pid` has spent, or None where
    /proc cannot tell."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, ValueError):
        return None  # utime and stime are fields 14 and 15, in ticks


def _at(samples, when):
    """Each process's CPU seconds at time `when`, interpolated between
    `(time, [seconds of each process])` samples; None if the samples do not
    span it."""
    for (t0, c0), (t1, c1) in zip(samples, samples[1:]):
        if t0 <= when <= t1 and None not in c0 + c1:
            share = (when - t0) / max(t1 - t0, 1e-9)
            return [a + (b - a) * share for a, b in zip(c0, c1)]
    return None


def _costs(samples, tasks, result):
    """{"all", "ps", "training": CPU seconds per global step over the window}
    of all the cluster's processes, its parameter servers, and its chief and
    workers; None if /proc cannot tell."""
    start, end = _at(samples, result["start"]), _at(samples, result["end"])
    if None in (start, end):
        return None
    spent = [b - a for a, b in zip(start, end)]
    steps = max(result["steps"], 1)
    ps = sum(s for s, (task, _) in zip(spent, tasks) if task == "ps")
    return {"all": sum(spent) / steps, "ps": ps / steps,
            "training": (sum(spent) - ps) / steps}


def run_cluster(variant, rows, args, work_dir):
    """(global steps/s, `_costs` or None) of one run of `variant` (starts and
    kills the cluster)."""
    model_dir = tempfile.mkdtemp(prefix=variant + "-", dir=work_dir)
    addresses = ["127.0.0.1:%d" % p for p in _free_ports(1 + args.workers + args.ps)]
    spec = {"chief": addresses[:1], "ps": addresses[1 + args.workers:]}
    if args.workers:
        spec["worker"] = addresses[1:1 + args.workers]
    tasks = ([("ps", i) for i in range(args.ps)] + [("chief", 0)]
             + [("worker", i) for i in range(args.workers)])
    processes = []
    report = os.path.join(model_dir, "report.json")
    try:
        for task, index in tasks:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_CONFIG=json.dumps(
                {"cluster": spec, "task": {"type": task, "index": index}}))
            log = open(os.path.join(model_dir, "%s%d.log" % (task, index)), "w")
            processes.append(subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--task", "--variant", variant,
                 "--rows", str(rows), "--model-dir", model_dir, "--ps", str(args.ps),
                 "--workers", str(args.workers), "--warmup", str(args.warmup),
                 "--window", str(args.window), "--threads", "%d,%d" % args.threads],
                env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.time() + args.warmup + args.window + 600
        samples = []
        while not os.path.exists(report):
            samples.append((time.time(), [_cpu_seconds(p.pid) for p in processes]))
            chief = processes[args.ps]
            if chief.poll() not in (None, 0) or time.time() > deadline:
                raise RuntimeError("%s: the chief failed:\n%s"
                                   % (variant, _chief_log(model_dir)[-3000:]))
            time.sleep(0.2)
        samples.append((time.time(), [_cpu_seconds(p.pid) for p in processes]))
        time.sleep(0.2)
        with open(report) as handle:
            result = json.load(handle)
        if "error" in result:
            raise RunFailed("%s: %s; the chief's log ends:\n%s"
                            % (variant, result["error"], _chief_log(model_dir)[-3000:]))
        lazy = "averaged lazily" in _chief_log(model_dir)
        if lazy != (variant in ("hook", "with_ema")):
            raise RuntimeError("%s: the table was%s averaged lazily" % (variant, "" if lazy
                                                                          else " not"))
    finally:
        for process in processes:
            process.kill()
            process.wait()
        shutil.rmtree(model_dir, ignore_errors=True)
    return result["steps"] / result["seconds"], _costs(samples, tasks, result)


def _chief_log(model_dir):
    with open(os.path.join(model_dir, "chief0.log")) as handle:
        return handle.read()


class RunFailed(RuntimeError):
    """A run that measured no rate (its report says why)."""


def _threads(text):
    inter, intra = (int(n) for n in text.split(","))
    return inter, intra


def quartiles(values):
    ordered = sorted(values)
    return (ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4])


def measure(rows, variants, args, work_dir):
    rates, costs = {v: [] for v in variants}, {v: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            try:
                rate, cost = run_cluster(v, rows, args, work_dir)
            except RunFailed as failure:
                print("  round %d %-11s failed, run again: %s" % (r + 1, v, failure))
                rate, cost = run_cluster(v, rows, args, work_dir)
            rates[v].append(rate)
            costs[v].append(cost)
            print("  round %d %-11s %8.1f global steps/s, %s CPU ms a step"
                  % (r + 1, v, rate, "?" if cost is None else
                     "%.2f (ps %.2f, chief and workers %.2f)"
                     % tuple(1000 * cost[k] for k in ("all", "ps", "training"))))
            sys.stdout.flush()
    results = {}
    for v in variants:
        ratios = [a / b for a, b in zip(rates[v], rates["none"])]
        results[v] = {"steps_per_s": statistics.median(rates[v]),
                      "ratio": statistics.median(ratios),
                      "ratio_quartiles": quartiles(ratios),
                      "rounds_steps_per_s": rates[v], "rounds_ratio": ratios}
        if None not in costs[v] + costs["none"]:
            cost_ratios = [b["all"] / a["all"] for a, b in zip(costs[v], costs["none"])]
            ms = {k: [1000 * c[k] for c in costs[v]] for k in ("all", "ps", "training")}
            results[v].update(
                cpu_ms_per_step=statistics.median(ms["all"]),
                ps_cpu_ms_per_step=statistics.median(ms["ps"]),
                training_cpu_ms_per_step=statistics.median(ms["training"]),
                cost_ratio=statistics.median(cost_ratios),
                cost_ratio_quartiles=quartiles(cost_ratios),
                rounds_cpu_ms_per_step=ms["all"], rounds_ps_cpu_ms_per_step=ms["ps"],
                rounds_training_cpu_ms_per_step=ms["training"])
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="1000000,10000000",
                        help="table sizes, comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds of training before the window")
    parser.add_argument("--window", type=float, default=20.0, help="seconds timed")
    parser.add_argument("--threads", default="2,1", type=_threads,
                        help="inter-op,intra-op threads of each task (0,0: TensorFlow's)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 10,000 rows, none and hook, one round of 2 s")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--task", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.task:
        args.rows = int(args.rows)
        return run_task(args)
    if args.quick:
        args.rows, args.variants, args.rounds = "10000", "none,hook", 1
        args.warmup, args.window = 1.0, 2.0
    variants = tuple(args.variants.split(","))
    if "none" not in variants:
        variants = ("none",) + variants
    import tensorflow as tf
    from throughput import cpu_model
    report = {"tensorflow": tf.__version__, "python": platform.python_version(),
              "cpu": cpu_model(), "cores": os.cpu_count(), "decay": DECAY, "dim": DIM,
              "ids": IDS, "batch": BATCH, "ps": args.ps, "workers": args.workers,
              "rounds": args.rounds, "warmup": args.warmup, "window": args.window,
              "threads": list(args.threads),
              "tables": {}}
    work_dir = tempfile.mkdtemp(prefix="estimator-ema-cluster-")
    try:
        for rows in [int(r) for r in args.rows.split(",")]:
            print("%d x %d table over %d ps, chief + %d workers, %d ids x batch %d, Adagrad "
                  "(TF %s)" % (rows, DIM, args.ps, args.workers, IDS, BATCH, tf.__version__))
            results = measure(rows, variants, args, work_dir)
            report["tables"][str(rows)] = results
            print("  %-11s %10s %8s  %-15s %12s %8s  %-11s  %6s %9s" % (
                "variant", "steps/s", "ratio", "quartiles", "CPU ms/step", "ratio",
                "quartiles", "of ps", "of tasks"))
            for v in variants:
                r = results[v]
                line = "  %-11s %10.1f %8.3f  %.3f-%.3f    " % (
                    (v, r["steps_per_s"], r["ratio"]) + r["ratio_quartiles"])
                if "cost_ratio" in r:
                    line += "%12.2f %8.3f  %.3f-%.3f  %6.2f %9.2f" % (
                        (r["cpu_ms_per_step"], r["cost_ratio"]) + r["cost_ratio_quartiles"]
                        + (r["ps_cpu_ms_per_step"], r["training_cpu_ms_per_step"]))
                print(line)
            sys.stdout.flush()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
