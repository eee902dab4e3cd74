"""The installed package: its public surface, its import, its command line."""

import io
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

import estimator_ema
from conftest import COMMAND
from estimator_ema import _compat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CI = os.path.join(REPO, ".ci", "run")

PUBLIC_API = [
    "AveragedBestExporter",
    "AveragedExporter",
    "AveragedFinalExporter",
    "ExponentialMovingAverageHook",
    "InMemoryEvaluatorHook",
    "StochasticWeightAveragingHook",
    "__version__",
    "averaged_estimator",
    "export_saved_model",
    "read_averages",
    "restore_averages",
    "warm_start_from_averages",
    "write_averaged_checkpoint",
    "average_tensors",
    "update_batch_norm",
    "with_ema",
    "with_swa",
]


def test_public_api_is_pinned():
    assert sorted(estimator_ema.__all__) == sorted(PUBLIC_API)
    for name in estimator_ema.__all__:
        assert hasattr(estimator_ema, name)


def imported_from_the_source_tree(package_file, repo):
    """Whether `package_file` (a package's `__init__.py`) is the source tree's own
    copy, `<repo>/estimator_ema`, rather than an installed one: an environment
    inside the clone (the Quickstart's `.venv/lib/.../site-packages`) is installed."""
    location = os.path.realpath(os.path.dirname(os.path.abspath(package_file)))
    return location == os.path.realpath(os.path.join(repo, "estimator_ema"))


def test_tests_run_against_the_installed_package():
    assert not imported_from_the_source_tree(estimator_ema.__file__, REPO), (
        "estimator_ema was imported from the source tree (%s); install it with "
        "'pip install .' (not -e) and run pytest from the repository root."
        % os.path.dirname(estimator_ema.__file__))


@pytest.mark.parametrize("package_file, source", [
    ("{repo}/estimator_ema/__init__.py", True),
    ("{repo}/tests/../estimator_ema/__init__.py", True),
    ("{repo}/.venv/lib/python3.11/site-packages/estimator_ema/__init__.py", False),
    ("/usr/lib/python3/site-packages/estimator_ema/__init__.py", False),
    ("{repo}-copy/estimator_ema/__init__.py", False),
], ids=["source", "source-via-dotdot", "venv-in-the-clone", "elsewhere", "sibling"])
def test_installed_copies_are_told_from_the_source_tree(tmp_path, package_file, source):
    repo = str(tmp_path / "clone")
    assert imported_from_the_source_tree(package_file.format(repo=repo), repo) is source


@pytest.mark.parametrize("kind", ["v1", "v2", "v1-canned", "v2-canned"])
def test_every_function_taking_an_estimator_takes_v1_v2_and_canned_ones(tmp_path, kind):
    """The type checks pass; the estimator's empty model_dir is the next error."""
    module = tf.compat.v1.estimator if kind.startswith("v1") else tf.estimator
    model_dir = str(tmp_path / "empty")
    if kind.endswith("canned"):
        est = module.BaselineRegressor(model_dir=model_dir)
    else:
        est = module.Estimator(lambda features, labels, mode: None, model_dir)
    assert isinstance(estimator_ema.averaged_estimator(est), tf.estimator.Estimator)
    no_checkpoint = r"'estimator.model_dir' is neither a checkpoint nor a model_dir"
    with pytest.raises(ValueError, match=no_checkpoint):
        estimator_ema.export_saved_model(est, str(tmp_path / "export"), lambda: None)
    with pytest.raises(ValueError, match=no_checkpoint):
        estimator_ema.update_batch_norm(est, lambda: None, steps=1)


def _python(code, **env):
    """Runs `code` in a fresh interpreter, from outside the source tree (so it
    imports the installed package, as `python -c` from the repository root would not)."""
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=full_env, timeout=300, cwd=os.path.dirname(REPO))


@pytest.mark.parametrize("version", ["2.16.1", "2.3.4", "1.14.0", "3.0.0"])
def test_unsupported_tensorflow_fails_with_one_sentence(tmp_path, version):
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("__version__ = %r\n" % version)
    result = _python("from estimator_ema import with_ema", PYTHONPATH=str(tmp_path))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: estimator-ema needs TensorFlow 1.15 on Python 3.7, "
                           "or TensorFlow 2.4 to 2.15 on Python 3.8+")
    assert "found TensorFlow %s" % version in last
    assert "pip install 'estimator-ema[" in last


@pytest.mark.parametrize("version", ["1.15.5", "2.4.0", "2.4.4", "2.5.3", "2.6.5", "2.7.4",
                                     "2.8.4", "2.9.3", "2.10.1", "2.11.1", "2.12.0", "2.13.1",
                                     "2.14.1", "2.15.1", "2.15.0rc1"])
def test_supported_versions_pass_the_check(version):
    _compat.check_version(version)


@pytest.mark.parametrize("owner, names", [
    ("Estimator", ["_add_meta_graph_for_mode", "_call_model_fn", "_export_all_saved_models",
                   "_get_features_and_labels_from_input_fn"]),
    ("Operation", ["_add_control_input", "_get_control_flow_context"]),
    ("Graph", ["_get_control_flow_context"]),
    ("Variable", ["_get_save_slice_info", "_set_save_slice_info"]),
])
def test_the_private_tensorflow_names_the_package_uses_exist(owner, names):
    """The package calls these private methods (and looks for Estimator's
    `_add_meta_graph_for_mode` on the call stack); a TensorFlow without one
    fails here by name rather than deep in a test."""
    from tensorflow.python.framework import ops
    classes = {"Estimator": list(_compat.ESTIMATOR_CLASSES), "Operation": [ops.Operation],
               "Graph": [ops.Graph], "Variable": [tf.compat.v1.Variable, tf.Variable]}[owner]
    missing = ["%s.%s" % (cls.__name__, name) for cls in classes for name in names
               if not callable(getattr(cls, name, None))]
    assert not missing, "TensorFlow %s lacks %s" % (tf.__version__, missing)


def test_import_changes_no_tensorflow_global_state():
    code = (
        "import tensorflow as tf\n"
        "def state():\n"
        "    return (tf.executing_eagerly(), tf.compat.v1.logging.get_verbosity(),\n"
        "            len(tf.compat.v1.get_default_graph().get_operations()),\n"
        "            tf.compat.v1.get_default_graph().get_all_collection_keys())\n"
        "before = state()\n"
        "import estimator_ema, estimator_ema.cli, estimator_ema.demo\n"
        "assert state() == before, (before, state())\n"
        "print('same')\n")
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "same"


def test_cli_demo_end_to_end(tmp_path):
    model_dir = tmp_path / "demo"
    result = subprocess.run(
        [COMMAND, "demo", "--steps", "400", "--model-dir", str(model_dir)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "training: step 400/400" in out
    assert "raw weights" in out and "averaged weights" in out
    assert "The averaged weights are better by" in out
    assert "model_dir:   %s" % model_dir in out
    assert "tensorboard --logdir %s" % model_dir in out
    names = {n for n, _ in tf.train.list_variables(str(model_dir))}
    assert "hidden/kernel/ExponentialMovingAverage" in names


def test_python_dash_m_help():
    result = subprocess.run([sys.executable, "-m", "estimator_ema", "--help"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0
    assert "demo" in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["demo", "--steps", "0"], "estimator-ema demo: error: 'steps' must be a positive int "
                               "(got 0)."),
    (["demo", "--decay", "1.5"], "estimator-ema demo: error: 'decay' must be a float in "
                                 "[0, 1) (got 1.5)."),
])
def test_cli_bad_input_is_one_line_and_non_zero(argv, message):
    result = subprocess.run([COMMAND] + argv, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == message


def test_demo_averages_win_and_curves_overlay_in_tensorboard(tmp_path):
    from estimator_ema import demo
    out = io.StringIO()
    result = demo.run(steps=300, model_dir=str(tmp_path), evaluations=3, out=out)
    assert result["averaged"] < result["raw"]
    assert [step for step, _, _ in result["curve"]] == [100, 200, 300]
    assert result["model_dir"] == str(tmp_path)
    for name in ["eval_raw", "eval_averaged"]:
        assert tf.io.gfile.glob(str(tmp_path / name / "events.out.tfevents.*"))


def test_demo_plot(tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curve.png"
    result = subprocess.run(
        [COMMAND, "demo", "--steps", "200", "--model-dir", str(tmp_path / "m"), "--plot",
         str(png)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "plot:        %s" % png in result.stdout
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _ci_function(script, *args, cwd=None):
    """Runs `script` (arguments $1, $2, ...) in bash with .ci/run's functions defined:
    sourced, so that the CI itself does not run."""
    return subprocess.run(["bash", "-c", 'ci=$1; shift; source "$ci"; set -euo pipefail; '
                           + script, "bash", CI] + [str(a) for a in args],
                          capture_output=True, text=True, cwd=cwd, timeout=60)


def _quickstart_blocks(readme, out):
    out.mkdir()
    result = _ci_function('quickstart_blocks "$1" "$2"', readme, out)
    assert result.returncode == 0, result.stderr
    blocks = [(out / ("%d.sh" % (i + 1))).read_text() for i in range(int(result.stdout))]
    assert sorted(os.listdir(str(out))) == ["%d.sh" % (i + 1) for i in range(len(blocks))]
    return blocks


FAKE_README = """# project

```bash
echo before
```

## Quickstart

Text.

```bash
echo one
echo two
```

```python
print("not a shell block")
```

### A subsection

```bash
echo three
```

## Next

```bash
echo after
```
"""


def test_ci_extracts_the_quickstart_bash_blocks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(FAKE_README)
    assert _quickstart_blocks(readme, tmp_path / "blocks") == [
        "echo one\necho two\n", "echo three\n"]


def test_the_quickstart_is_two_shell_blocks_the_second_runs_the_tests(tmp_path):
    blocks = _quickstart_blocks(os.path.join(REPO, "README.md"), tmp_path / "blocks")
    assert len(blocks) == 2
    assert blocks[0].startswith("python3 -m venv .venv\n")
    assert blocks[1] == ".venv/bin/pytest\n"


def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com"] + list(args),
                   cwd=str(cwd), check=True, capture_output=True)


def test_ci_runs_the_quickstart_in_a_fresh_clone_and_fails_on_its_exit_code(tmp_path):
    """A fake repository: block 1 makes the `.venv/bin/python` that CI asks for
    TensorFlow's version, block 2 exits 5 as pytest does when it collects nothing."""
    repo = tmp_path / "repo"
    repo.mkdir()
    fake_python = "#!/bin/sh\necho TensorFlow fake\n"
    (repo / "README.md").write_text(
        "## Quickstart\n\n```bash\nmkdir -p .venv/bin\nprintf '%s' > .venv/bin/python\n"
        "chmod +x .venv/bin/python\n```\n\n```bash\ntest -f committed\n"
        "test ! -f uncommitted\nexit 5\n```\n" % fake_python.replace("\n", "\\n"))
    (repo / "committed").write_text("")
    _git("init", "-q", cwd=repo)
    _git("add", ".", cwd=repo)
    _git("commit", "-q", "-m", "fake", cwd=repo)
    (repo / "uncommitted").write_text("")
    work = tmp_path / "work"
    work.mkdir()
    result = _ci_function('work="$1"; run_quickstart quick', work, cwd=repo)
    assert result.returncode == 5, result.stdout + result.stderr
    assert "(uncommitted changes are not in the clone)" in result.stdout
    assert "TensorFlow fake" in result.stdout
    assert "--- Quickstart block 2:\n    test -f committed\n" in result.stdout
    assert (work / "quick" / ".venv" / "bin" / "python").exists()
    assert not (repo / ".venv").exists()


def test_ci_finds_each_python_it_needs_or_says_which_is_missing():
    found = _ci_function('find_python "$1"', "%d.%d" % sys.version_info[:2])
    assert found.returncode == 0, found.stderr
    code = "import sys; print(sys.version_info[:2])"
    version = subprocess.run([found.stdout.strip(), "-c", code],
                             capture_output=True, text=True).stdout.strip()
    assert version == str(sys.version_info[:2])
    missing = _ci_function('find_python 3.99')
    assert missing.returncode == 1
    assert missing.stderr.strip() == "CI needs Python 3.99"


def test_ci_runs_its_lanes_at_once_each_to_its_first_failure_and_fails_if_one_did():
    """`run_lanes`: each lane's lines are prefixed with its name, a lane stops at its
    first failing command (errexit, as the stages need), the others run on, and the
    failure names the lane."""
    script = ('one() { echo a; false; echo never; }; two() { sleep 0.2; echo b; }; '
              'run_lanes one two')
    result = _ci_function(script)
    assert result.returncode == 1
    assert sorted(result.stdout.splitlines()) == ["[one] a", "[two] b"]
    assert result.stderr.strip() == "CI failed in: one"
    passed = _ci_function('one() { echo a; }; two() { echo b; }; run_lanes one two')
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout.splitlines()[-1] == "=== all lanes passed: one two"


SUPPORTED_TENSORFLOWS = ["1.15"] + ["2.%d" % minor for minor in range(4, 16)]


@pytest.mark.parametrize("version", SUPPORTED_TENSORFLOWS)
def test_each_supported_tensorflow_has_a_working_set_and_a_tox_environment(version):
    with open(os.path.join(REPO, "requirements", "tf-%s.txt" % version)) as handle:
        pins = [line for line in handle.read().splitlines() if not line.startswith("#")]
    tensorflow = "tensorflow==1.15.5" if version == "1.15" else "tensorflow-cpu==%s.*" % version
    assert pins[:2] == [tensorflow, "tensorflow-estimator==%s.*" % version]
    assert [re.match(r"[a-z]+", pin).group() for pin in pins[-2:]] == ["numpy", "protobuf"]
    _compat.check_version(version + ".0")
    with open(os.path.join(REPO, "tox.ini")) as handle:
        tox = handle.read()
    factor = "tf" + version.replace(".", "")
    assert "%s: -r{toxinidir}/requirements/tf-%s.txt\n" % (factor, version) in tox


# tests/test_libraries.py's libraries, installed by CI beside these TensorFlows.
LIBRARY_TENSORFLOWS = ["1.15", "2.15"]


def test_no_working_set_for_an_unsupported_tensorflow():
    assert sorted(os.listdir(os.path.join(REPO, "requirements"))) == sorted(
        ["tf-%s.txt" % version for version in SUPPORTED_TENSORFLOWS]
        + ["libraries-tf-%s.txt" % version for version in LIBRARY_TENSORFLOWS])
