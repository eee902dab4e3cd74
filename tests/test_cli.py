"""`estimator-ema inspect` and `estimator-ema export`, end to end through the
installed console script; its output free of TensorFlow's logs."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import COMMAND, EMA, load
from estimator_ema import _options, cli


def _run(*argv):
    return subprocess.run([COMMAND] + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=300)


def test_the_cli_default_name_is_the_packages():
    assert cli.EMA_NAME == _options.EMA_NAME


def test_inspect(hook_trained, model_dir):
    result = _run("inspect", model_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    prefix = tf.train.latest_checkpoint(str(model_dir))
    assert lines[:3] == ["checkpoint: %s" % prefix,
                         "averages:   ExponentialMovingAverage, 2 of 3 variables", ""]
    assert lines[3].split() == ["variable", "shape", "average", "L2", "distance", "relative"]
    rows = {line.split()[0]: line for line in lines[4:]}
    assert sorted(rows) == ["global_step", "linear/b", "linear/w"]
    assert rows["global_step"].split() == ["global_step", "[]", "no", "-", "-"]
    for var, shape in [("linear/b", ["[1]"]), ("linear/w", ["[3,", "1]"])]:
        cells = rows[var].split()
        assert cells[:-2] == [var] + shape + ["yes"]
        weight, average = load(model_dir, var), load(model_dir, var + "/" + EMA)
        distance = np.linalg.norm(average - weight)
        np.testing.assert_allclose(float(cells[-2]), distance, rtol=1e-3)
        np.testing.assert_allclose(float(cells[-1]), distance / np.linalg.norm(weight),
                                   rtol=1e-3)


def test_inspect_another_name(hook_trained, model_dir):
    result = _run("inspect", model_dir, "--name", "StochasticWeightAverage")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "averages:   none named StochasticWeightAverage in this checkpoint"
    # No averages by that name: the EMA averages are plain variables here.
    assert [line.split()[0] for line in lines[4:]] == [
        "global_step", "linear/b", "linear/b/" + EMA, "linear/w", "linear/w/" + EMA]
    assert all(" no " in line for line in lines[4:])


@pytest.mark.parametrize("out", ["averaged/model.ckpt", "averaged/"], ids=["prefix", "dir"])
def test_export(hook_trained, model_dir, tmp_path, out):
    result = _run("export", model_dir, str(tmp_path) + "/" + out)
    assert result.returncode == 0, result.stderr
    written = result.stdout.strip()
    name = "model.ckpt" if out.endswith("ckpt") else "model.ckpt-10"
    assert written == os.path.join(str(tmp_path), "averaged", name)
    assert sorted(n for n, _ in tf.train.list_variables(written)) == [
        "global_step", "linear/b", "linear/w"]
    for var in ["linear/b", "linear/w"]:
        np.testing.assert_array_equal(load(written, var), load(model_dir, var + "/" + EMA))


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_help(command):
    result = _run(command, "--help")
    assert result.returncode == 0
    assert "PATH" in result.stdout and "--name" in result.stdout


def _bad_input(case, model_dir, tmp_path):
    """argv and the expected error line for each bad-input case."""
    prefix = tf.train.latest_checkpoint(str(model_dir))
    if case == "missing-path":
        return (["inspect", "/no/such/model"],
                "estimator-ema inspect: error: 'PATH' is neither a checkpoint nor a model_dir "
                "(got '/no/such/model').")
    if case == "bad-name":
        return (["inspect", str(model_dir), "--name", "a/b"],
                "estimator-ema inspect: error: 'name' must be a non-empty string of letters, "
                "digits, '_', '.' or '-' (got 'a/b').")
    if case == "over-the-source":
        return (["export", str(model_dir), prefix],
                "estimator-ema export: error: 'output_prefix' must not be the source "
                "checkpoint (got '%s')." % prefix)
    if case == "no-averages":
        return (["export", str(model_dir), str(tmp_path / "out" / "m"), "--name", "SWA"],
                "estimator-ema export: error: Checkpoint '%s' has no averages named 'SWA'."
                % prefix)
    corrupt = tmp_path / "corrupt"
    (tmp_path / "corrupt.index").write_bytes(b"not a checkpoint index")
    return (["inspect", str(corrupt)], None)


@pytest.mark.parametrize("case", ["missing-path", "bad-name", "over-the-source", "no-averages",
                                  "corrupt-checkpoint"])
def test_bad_input_is_one_line_and_exit_2(hook_trained, model_dir, tmp_path, case):
    argv, message = _bad_input(case, model_dir, tmp_path)
    result = _run(*argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    if message is None:
        assert lines[0].startswith("estimator-ema inspect: error: Checkpoint '%s' could not be "
                                   "read (truncated or corrupt?): " % (tmp_path / "corrupt"))
    else:
        assert lines[0] == message


def _run_as_users_do(*argv):
    """The console script without the TF_CPP_MIN_LOG_LEVEL that the tests set."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([COMMAND] + [str(a) for a in argv], capture_output=True, text=True,
                          timeout=300, env=env)


def test_help_has_no_log_lines_and_does_not_import_tensorflow():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-X", "importtime", COMMAND, "--help"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: estimator-ema ")
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert "estimator_ema.cli" in imported
    assert [name for name in imported if name.startswith("tensorflow")] == []
    assert _run_as_users_do("--help").stderr == ""


def test_inspect_has_no_log_lines(hook_trained, model_dir):
    result = _run_as_users_do("inspect", model_dir)
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout.startswith("checkpoint: %s\n" % tf.train.latest_checkpoint(str(model_dir)))


def test_an_error_is_its_one_line_without_log_lines():
    result = _run_as_users_do("inspect", "/no/such/model")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == ("estimator-ema inspect: error: 'PATH' is neither a checkpoint nor a "
                             "model_dir (got '/no/such/model').\n")
