"""Training throughput with and without weight averaging, side by side.

Every variant trains the same MLP (plain SGD, a `tf.compat.v1` optimizer) in its
own graph and `MonitoredSession`, built once. The variants then take turns in
rounds inside this one process, so a noisy, shared machine slows them alike;
each round's steps/s is divided by the no-averaging variant's steps/s of the
same round, and the report gives the median over rounds.

Variants:

  none          no averaging
  stock         tf.compat.v1.train.ExponentialMovingAverage(0.999,
                num_updates=global_step).apply(...) under
                control_dependencies([train_op]) in the model_fn (EfficientNet)
  qa_hook       a hook that runs the stock `ema.apply` op with a second
                session.run in after_run, every step
  hook          ExponentialMovingAverageHook(0.999)
  hook_every10  ExponentialMovingAverageHook(0.999, every_n_steps=10)
  with_ema      the with_ema(decay=0.999) decorator
  with_ema_every10  with_ema(decay=0.999, every_n_steps=10): its gate is in
                the graph, so every run runs the gate
  floor         not an average: `avg -= w` for every weight, in the model_fn
                after the train op; the least memory traffic any update of
                the averages can have (read the weight and the average, write
                the average, once each), to show how much of a loss is left

With `--baseline DIR`, a second copy of the package, from the source checkout
DIR (an earlier commit, say), is loaded beside the installed one, and its
`hook`, `hook_every10`, `with_ema` and `with_ema_every10` variants (named
`<variant>@baseline`)
take turns in the same rounds: the ratios of the two versions are then
measured side by side.

With `--copies N`, each variant is built N times, each copy in its own graph
and session, and every copy takes a turn each round; a variant's steps/s in a
round is the mean of its copies'. Two builds of the same code can differ by
several percent for the whole run (the memory their buffers landed in, say):
one copy of each variant measures that as well as the variants.

Usage:

  python benchmarks/throughput.py [--config big,small] [--rounds 41] [--copies 3]
                                  [--session bare] [--baseline DIR] [--json out.json]
  python benchmarks/throughput.py --quick --json out.json     # smoke run, for CI
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import estimator_ema  # noqa: E402

tf1 = tf.compat.v1
DECAY = 0.999
VARIANTS = ("none", "stock", "qa_hook", "hook", "hook_every10", "with_ema", "with_ema_every10",
            "floor")
AVERAGING = ("hook", "hook_every10", "with_ema", "with_ema_every10")
"""The variants of the package (which a baseline copy also runs)."""
# Steps per variant per round: short turns (tens of milliseconds), so a burst of
# load from other processes hits every variant of a round alike.
CONFIGS = {
    "big": {"layers": 20, "width": 256, "batch": 64, "steps": 10},
    "small": {"layers": 2, "width": 16, "batch": 64, "steps": 200},
}


def mlp_model_fn(layers, width):
    """An MLP of `layers` dense layers of `width` units, MSE, plain SGD."""

    def model_fn(features, labels, mode):
        x = features
        for i in range(layers):
            kernel = tf1.get_variable("dense_%d/kernel" % i, [width, width],
                                      initializer=tf1.glorot_uniform_initializer())
            bias = tf1.get_variable("dense_%d/bias" % i, [width],
                                    initializer=tf1.zeros_initializer())
            x = tf.matmul(x, kernel) + bias
            if i < layers - 1:
                x = tf.nn.relu(x)
        loss = tf.reduce_mean(tf.square(x - labels))
        step = tf1.train.get_or_create_global_step()
        train_op = tf1.train.GradientDescentOptimizer(0.01).minimize(loss, global_step=step)
        return tf.estimator.EstimatorSpec(mode, loss=loss, train_op=train_op)

    return model_fn


class QuestionAndAnswerHook(tf1.train.SessionRunHook):
    """The hook often posted as an answer: stock `ema.apply`, run after each step."""

    def begin(self):
        ema = tf1.train.ExponentialMovingAverage(DECAY, num_updates=tf1.train.get_global_step())
        self._update = ema.apply(tf1.trainable_variables())

    def after_run(self, run_context, run_values):
        run_context.session.run(self._update)


def estimator_session(spec, hooks, model_dir):
    """A MonitoredTrainingSession with the hooks Estimator.train adds, at the
    default RunConfig: NaN check, loss logging, step counter and summaries every
    100 steps, and a checkpoint saver (every 600 s)."""
    tf1.summary.scalar("loss", spec.loss)
    step = tf1.train.get_global_step()
    hooks = list(hooks) + [
        tf1.train.StopAtStepHook(last_step=2 ** 62),
        tf1.train.NanTensorHook(spec.loss),
        tf1.train.LoggingTensorHook({"loss": spec.loss, "step": step}, every_n_iter=100),
    ]
    saver = tf1.train.CheckpointSaverHook(model_dir, save_secs=600, scaffold=spec.scaffold)
    return tf1.train.MonitoredTrainingSession(
        checkpoint_dir=model_dir, scaffold=spec.scaffold, hooks=hooks,
        chief_only_hooks=[saver], save_checkpoint_secs=0, save_summaries_steps=100,
        log_step_count_steps=100)


def floor_update(train_op):
    """`avg -= w` for every trainable weight, after `train_op` (see "floor")."""
    updates = []
    with tf.control_dependencies([train_op]):
        for var in tf1.trainable_variables():
            with tf1.init_scope():
                avg = tf1.Variable(var.initial_value, trainable=False, name=var.op.name + "/floor")
            updates.append(tf1.assign_sub(avg, var.read_value()))
    return tf.group(*updates)


BASELINE = "@baseline"
PACKAGES = {"": estimator_ema}


def load_baseline(source_dir):
    """Imports the package from the checkout `source_dir` as a second copy,
    beside the installed one, for the `<variant>@baseline` variants."""
    installed = {k: m for k, m in sys.modules.items() if k.split(".")[0] == "estimator_ema"}
    for name in installed:
        del sys.modules[name]
    sys.path.insert(0, os.path.abspath(source_dir))
    try:
        import estimator_ema as baseline
        # Its public names' modules (imported on first use) and, through them,
        # its private ones: imported now, from the checkout, not later from
        # the installed package.
        for name in baseline.__all__:
            getattr(baseline, name)
    finally:
        sys.path.pop(0)
        for name in [k for k in sys.modules if k.split(".")[0] == "estimator_ema"]:
            del sys.modules[name]
        sys.modules.update(installed)
    PACKAGES[BASELINE] = baseline


def build(variant, config, session_kind, model_dir):
    """(graph, MonitoredSession, train op) of one variant, ready to run; its
    checkpoints go to `model_dir`."""
    variant, _, suffix = variant.partition("@")
    package = PACKAGES["@" + suffix if suffix else ""]
    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        rng = np.random.RandomState(0)
        shape = [config["batch"], config["width"]]
        features = tf.constant(rng.randn(*shape).astype(np.float32))
        labels = tf.constant(rng.randn(*shape).astype(np.float32))
        model_fn = mlp_model_fn(config["layers"], config["width"])
        if variant == "with_ema":
            model_fn = package.with_ema(model_fn, decay=DECAY)
        elif variant == "with_ema_every10":
            model_fn = package.with_ema(model_fn, decay=DECAY, every_n_steps=10)
        spec = model_fn(features, labels, tf.estimator.ModeKeys.TRAIN)
        train_op, hooks = spec.train_op, []
        if variant == "stock":
            ema = tf1.train.ExponentialMovingAverage(
                DECAY, num_updates=tf1.train.get_global_step())
            with tf.control_dependencies([train_op]):
                train_op = ema.apply(tf1.trainable_variables())
        elif variant == "floor":
            train_op = floor_update(train_op)
        elif variant == "qa_hook":
            hooks.append(QuestionAndAnswerHook())
        elif variant == "hook":
            hooks.append(package.ExponentialMovingAverageHook(DECAY))
        elif variant == "hook_every10":
            hooks.append(package.ExponentialMovingAverageHook(DECAY, every_n_steps=10))
        elif variant not in ("none", "with_ema", "with_ema_every10"):
            raise ValueError("unknown variant %r" % variant)
        # As Estimator.train does, before the hooks' begin().
        tf1.add_to_collection(tf1.GraphKeys.SAVERS, tf1.train.Saver(sharded=True))
        if session_kind == "estimator":
            session = estimator_session(spec, hooks, model_dir)
        else:
            session = tf1.train.MonitoredSession(
                session_creator=tf1.train.ChiefSessionCreator(scaffold=spec.scaffold),
                hooks=hooks)
    return graph, session, train_op


def timed_steps(graph, session, train_op, steps):
    """(steps per second of wall time, of this process's CPU time) over `steps` steps."""
    with graph.as_default():
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            session.run(train_op)
        return (steps / (time.perf_counter() - start),
                steps / max(time.process_time() - cpu_start, 1e-9))


def measure(config, variants, rounds, steps, warmup, session_kind, copies=1):
    model_dir = tempfile.mkdtemp(prefix="estimator-ema-throughput-")
    try:
        built = {v: [build(v, config, session_kind, os.path.join(model_dir, "%s.%d" % (v, c)))
                     for c in range(copies)] for v in variants}
        return run_rounds(built, variants, rounds, steps, warmup)
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)


def run_rounds(built, variants, rounds, steps, warmup, settle=0):
    """Per-variant results of `rounds` rounds of `steps` timed steps each, after
    `warmup` untimed steps per variant; with `settle`, each turn first runs that
    many untimed steps (caches refilled after another variant's turn).
    `built[variant]` is a list of copies, each `(graph, session, train op)`:
    every copy takes a turn each round, and a variant's steps/s in a round is
    the mean of its copies'. `steps` and `settle` are ints or `{variant: int}`."""
    turns = [(v, c) for v in variants for c in range(len(built[v]))]
    for v, c in turns:
        timed_steps(*built[v][c], warmup)
    speed = {turn: [] for turn in turns}
    cpu_speed = {turn: [] for turn in turns}
    for r in range(rounds):
        # Rotate the order so no turn always comes first (or right after another).
        order = turns[r % len(turns):] + turns[:r % len(turns)]
        for v, c in order:
            untimed = settle[v] if isinstance(settle, dict) else settle
            if untimed:
                timed_steps(*built[v][c], untimed)
            wall, cpu = timed_steps(*built[v][c], steps[v] if isinstance(steps, dict) else steps)
            speed[v, c].append(wall)
            cpu_speed[v, c].append(cpu)
    for copies in built.values():
        for graph, session, _ in copies:
            with graph.as_default():
                session.close()

    def mean_of_copies(measured, v):
        return [statistics.mean(values)
                for values in zip(*[measured[v, c] for c in range(len(built[v]))])]

    per_round = {v: mean_of_copies(speed, v) for v in variants}
    cpu_round = {v: mean_of_copies(cpu_speed, v) for v in variants}
    results = {}
    for v in variants:
        ratios = [a / b for a, b in zip(per_round[v], per_round["none"])]
        cpu_ratios = [a / b for a, b in zip(cpu_round[v], cpu_round["none"])]
        results[v] = {"steps_per_s": statistics.median(per_round[v]),
                      "ratio": statistics.median(ratios),
                      "ratio_quartiles": quartiles(ratios),
                      "cpu_ratio": statistics.median(cpu_ratios),
                      # Each copy's median ratio to the round's no averaging: how
                      # much two builds of the same code differ.
                      "copies_ratio": [
                          statistics.median(a / b for a, b in zip(speed[v, c], per_round["none"]))
                          for c in range(len(built[v]))],
                      "rounds_steps_per_s": per_round[v],
                      "rounds_ratio": ratios,
                      "rounds_cpu_steps_per_s": cpu_round[v]}
    return results


def quartiles(values):
    """(first, third) quartile: the spread of the per-round values."""
    ordered = sorted(values)
    return (ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4])


def targets(results):
    """The issue's targets, judged on one configuration's ratios."""
    stock_loss = 1.0 - results["stock"]["ratio"]
    out = {}
    for v in ("hook", "with_ema"):
        loss = 1.0 - results[v]["ratio"]
        out[v + "_loss_vs_stock"] = loss / stock_loss if stock_loss > 0 else None
        out[v + "_at_most_60pct_of_stock_loss"] = loss <= 0.6 * stock_loss
    for v in ("hook_every10", "with_ema_every10"):
        out[v + "_loses_at_most_3pct"] = results[v]["ratio"] >= 0.97
    out["never_slower_than_stock"] = all(
        results[v]["ratio"] >= results["stock"]["ratio"] for v in AVERAGING)
    return out


def cpu_model():
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="big,small",
                        help="comma-separated: %s" % ", ".join(CONFIGS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per variant per round (default: per configuration)")
    parser.add_argument("--copies", type=int, default=1,
                        help="build each variant this many times (each its own graph and "
                             "session), all taking turns: builds of the same code can differ "
                             "by several percent, which the mean over copies evens out")
    parser.add_argument("--warmup", type=int, default=50,
                        help="untimed steps per variant before the rounds")
    parser.add_argument("--session", choices=("estimator", "bare"), default="estimator",
                        help="estimator: a MonitoredTrainingSession with the hooks "
                             "Estimator.train adds (default); bare: a MonitoredSession with "
                             "no other hook, where a hook's own per-run cost shows most")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds of 5 steps, for CI")
    parser.add_argument("--baseline", metavar="DIR",
                        help="a source checkout of the package (an earlier commit) whose "
                             "variants of the package run in the same rounds")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    tf1.logging.set_verbosity(tf1.logging.ERROR)
    variants = tuple(args.variants.split(","))
    if "none" not in variants:
        variants = ("none",) + variants
    if args.baseline:
        load_baseline(args.baseline)
        variants += tuple(v + BASELINE for v in AVERAGING if v in variants)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 5, 2
    if args.copies < 1:
        parser.error("--copies must be at least 1")
    report = {"tensorflow": tf.__version__, "python": platform.python_version(),
              "baseline": args.baseline,
              "cpu": cpu_model(), "cores": os.cpu_count(), "decay": DECAY,
              "session": args.session, "rounds": args.rounds, "warmup": args.warmup,
              "copies": args.copies,
              "configs": {}}
    for name in args.config.split(","):
        config = dict(CONFIGS[name])
        steps = args.steps or config["steps"]
        results = measure(config, variants, args.rounds, steps, args.warmup, args.session,
                          args.copies)
        entry = dict(config, steps=steps, variants=results)
        if set(VARIANTS) <= set(variants):
            entry["targets"] = targets(results)
        report["configs"][name] = entry
        print("%s: %d layers x %d, batch %d, %d rounds x %d steps, %d cop%s of each, %s "
              "session (TF %s)" % (name, config["layers"], config["width"], config["batch"],
                                   args.rounds, steps, args.copies,
                                   "y" if args.copies == 1 else "ies", args.session,
                                   tf.__version__))
        print("  %-21s %10s %8s  %-15s %9s  %s" % ("variant", "steps/s", "ratio",
                                                    "ratio quartiles", "cpu ratio", "copies"))
        for v in variants:
            r = results[v]
            print("  %-21s %10.1f %8.3f  %.3f-%.3f     %9.3f  %s"
                  % ((v, r["steps_per_s"], r["ratio"]) + r["ratio_quartiles"]
                     + (r["cpu_ratio"], " ".join("%.3f" % x for x in r["copies_ratio"]))))
        for key, value in sorted(entry.get("targets", {}).items()):
            print("  %s: %s" % (key, value if not isinstance(value, float) else "%.2f" % value))
        sys.stdout.flush()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
