"""The `estimator-ema` command.

TensorFlow is imported only once a command runs (`--help` and argument errors
never import it), after `_quiet_tensorflow` has set this process's logging.
"""

import argparse
import os
import sys

# _options.EMA_NAME, spelled out so that --help does not import TensorFlow.
EMA_NAME = "ExponentialMovingAverage"


def _float(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="estimator-ema",
        description="Weight averaging (EMA and SWA) for TensorFlow Estimators.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    demo = commands.add_parser(
        "demo", help="train a small model offline and compare raw vs averaged weights",
        description="Trains a small model on data made in code with noisy SGD and "
                    "ExponentialMovingAverageHook, then evaluates the raw and the "
                    "averaged weights on held-out data.")
    demo.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    demo.add_argument("--decay", type=_float, default=0.99, help="EMA decay (default 0.99)")
    demo.add_argument("--model-dir", default=None,
                      help="where checkpoints and TensorBoard files go (default: a new "
                           "temporary directory)")
    demo.add_argument("--plot", default=None, metavar="PNG",
                      help="also draw raw vs averaged held-out loss over steps into this "
                           "PNG file (needs matplotlib: pip install 'estimator-ema[plot]')")
    _checkpoint_command(
        commands, "inspect", "list a checkpoint's variables and how far their averages are",
        "Lists each variable of a checkpoint with its shape, whether it has an average, and "
        "the L2 distance between average and weight (absolute and relative to the weight's "
        "norm).")
    export = _checkpoint_command(
        commands, "export", "write a checkpoint whose plain variable names hold the averages",
        "Writes a new checkpoint in which each averaged variable holds its average and the "
        "average variables are dropped, and prints its prefix. The source is never written.")
    export.add_argument("out", metavar="OUT",
                        help="the new checkpoint's prefix (e.g. averaged/model.ckpt), or an "
                             "existing directory or one ending in '/' to use the source's "
                             "file name there")
    export.add_argument("--drop-optimizer-slots", action="store_true",
                        help="also drop optimizer slots (Momentum, Adam, ...)")
    return parser


def _checkpoint_command(commands, name, summary, description):
    """A subcommand that takes a checkpoint PATH and the averages' --name."""
    command = commands.add_parser(name, help=summary, description=description)
    command.add_argument("path", metavar="PATH", help="a checkpoint prefix or a model_dir")
    command.add_argument("--name", default=EMA_NAME,
                         help="the averages' suffix (default %s; StochasticWeightAverage "
                              "for SWA)" % EMA_NAME)
    return command


def _format(value):
    return "-" if value is None else "%.4g" % value


def run_inspect(path, name, out):
    from estimator_ema import checkpoints
    checkpoint, rows = checkpoints.describe(checkpoints.resolve_checkpoint(path, "PATH"),
                                            name=name)
    averaged = sum(1 for row in rows if row[2])
    out.write("checkpoint: %s\n" % checkpoint)
    if averaged:
        out.write("averages:   %s, %d of %d variables\n\n" % (name, averaged, len(rows)))
    else:
        out.write("averages:   none named %s in this checkpoint\n\n" % name)
    table = [("variable", "shape", "average", "L2 distance", "relative")]
    table += [(var, str(shape), "yes" if has else "no", _format(distance), _format(relative))
              for var, shape, has, distance, relative in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                  + "\n")


def run_export(path, out_prefix, name, drop_optimizer_slots, out):
    from estimator_ema import checkpoints, rewriting
    source = checkpoints.resolve_checkpoint(path, "PATH")
    if out_prefix.endswith(("/", os.sep)) or os.path.isdir(out_prefix):
        out_prefix = os.path.join(out_prefix, os.path.basename(source))
    written = rewriting.write_averaged_checkpoint(
        source, out_prefix, name=name, drop_optimizer_slots=drop_optimizer_slots)
    out.write("%s\n" % written)


def _quiet_tensorflow():
    """The CLI's own choice, for its own process (the library never does this):
    no TensorFlow log lines around the command's output and errors.

    TF_CPP_MIN_LOG_LEVEL=3 must be set before TensorFlow is imported; it also
    hides the ERROR lines that GPU builds print at start-up without a GPU. A
    value the user has set is kept (TF_CPP_MIN_LOG_LEVEL=0 shows everything).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from estimator_ema._compat import tf
    tf.logging.set_verbosity(tf.logging.ERROR)


def main(argv=None):
    args = build_parser().parse_args(argv)
    _quiet_tensorflow()
    try:
        if args.command == "demo":
            from estimator_ema import demo
            demo.run(steps=args.steps, model_dir=args.model_dir, decay=args.decay,
                     plot=args.plot)
        elif args.command == "inspect":
            run_inspect(args.path, args.name, sys.stdout)
        elif args.command == "export":
            run_export(args.path, args.out, args.name, args.drop_optimizer_slots, sys.stdout)
    except (TypeError, ValueError) as error:
        return _fail(args.command, error)
    return 0


def _fail(command, message):
    sys.stderr.write("estimator-ema %s: error: %s\n" % (command, message))
    return 2
