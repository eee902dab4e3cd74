"""The benchmark scripts run, and the averaging builds in linear time.

No timing is asserted but a ratio of two build times measured side by side:
this machine is shared. The measured figures are in benchmarks/README.md.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import tensorflow as tf

from conftest import tf1
from estimator_ema import _ema, _options

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "benchmarks")
VARIANTS = {"none", "stock", "qa_hook", "hook", "hook_every10", "with_ema", "with_ema_every10",
            "floor"}


def _run(script, tmp_path, *args):
    # From tmp_path, so the scripts import the installed package.
    subprocess.run([sys.executable, os.path.join(BENCHMARKS, script)] + list(args),
                   cwd=str(tmp_path), check=True, timeout=900,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_throughput_quick_mode_reports_every_variant(tmp_path):
    out = tmp_path / "throughput.json"
    _run("throughput.py", tmp_path, "--quick", "--json", str(out))
    report = json.loads(out.read_text())
    assert set(report["configs"]) == {"big", "small"}
    for config in report["configs"].values():
        assert set(config["variants"]) == VARIANTS
        for variant in config["variants"].values():
            assert variant["steps_per_s"] > 0 and variant["ratio"] > 0


def test_build_time_script_runs(tmp_path):
    out = tmp_path / "build.json"
    _run("build_time.py", tmp_path, "--variables", "20", "--repeats", "1", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["averager"] > 0 and report["hook_ops"] > 0



def test_dense_update_script_times_stock_and_ours(tmp_path):
    out = tmp_path / "dense.json"
    _run("dense_update.py", tmp_path, "--layers", "2", "--width", "8", "--rounds", "2",
         "--steps", "2", "--json", str(out))
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"stock", "ours"}
    assert all(r["us_per_run"] > 0 for r in results.values())


def _build_seconds(variables):
    """Seconds to build the averaging of `variables` variables; checks that a
    second update adds no variable."""
    with tf.Graph().as_default() as graph:
        weights = [tf1.get_variable("v%d" % i, [4]) for i in range(variables)]
        loss = tf.add_n([tf.reduce_sum(w) for w in weights])
        step = tf1.train.get_or_create_global_step()
        train_op = tf1.train.GradientDescentOptimizer(0.1).minimize(loss, global_step=step)
        start = time.perf_counter()
        averager = _ema.ExponentialMovingAverager(_options.EmaOptions(0.999), graph)
        averager.update(after=[train_op])
        seconds = time.perf_counter() - start
        count = len(tf1.global_variables())
        averager.update()   # a second update (the hook builds two) adds no variable
        assert len(tf1.global_variables()) == count
    assert count == 2 * variables + 1
    return seconds


def test_averaging_over_1000_variables_builds_in_linear_time_and_once():
    # A ratio of two sizes built side by side (the faster of two builds each),
    # so that the machine's load cancels: linear measures 7 to 8 here (fixed
    # costs), bookkeeping quadratic in the variables tends to 100.
    small = min(_build_seconds(100), _build_seconds(100))
    large = min(_build_seconds(1000), _build_seconds(1000))
    assert large / small < 25, (small, large)


def test_throughput_runs_a_baseline_copy_of_the_package_side_by_side(tmp_path):
    out = tmp_path / "throughput.json"
    source = os.path.dirname(BENCHMARKS)
    _run("throughput.py", tmp_path, "--quick", "--config", "small", "--variants", "hook",
         "--baseline", source, "--json", str(out))
    report = json.loads(out.read_text())
    assert report["baseline"] == source
    assert set(report["configs"]["small"]["variants"]) == {"none", "hook", "hook@baseline"}


def test_throughput_copies_of_each_variant_take_turns(tmp_path):
    out = tmp_path / "throughput.json"
    _run("throughput.py", tmp_path, "--quick", "--config", "small", "--variants", "hook",
         "--copies", "2", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["copies"] == 2
    for result in report["configs"]["small"]["variants"].values():
        assert len(result["copies_ratio"]) == 2
        assert all(ratio > 0 for ratio in result["copies_ratio"])
        assert len(result["rounds_steps_per_s"]) == 2


def test_embedding_quick_mode_reports_every_variant(tmp_path):
    out = tmp_path / "embedding.json"
    _run("embedding.py", tmp_path, "--quick", "--json", str(out))
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"none", "stock", "hook_dense", "hook",
                                       "with_ema_dense", "with_ema"}
    for variant in report["variants"].values():
        assert variant["steps_per_s"] > 0 and variant["ratio"] > 0


def test_cluster_embedding_quick_mode_runs_a_cluster_per_variant(tmp_path):
    # Each variant on its own local cluster (2 ps, a chief, 2 workers); the
    # script itself checks that the hook's table was averaged lazily.
    out = tmp_path / "cluster.json"
    _run("cluster_embedding.py", tmp_path, "--quick", "--json", str(out))
    report = json.loads(out.read_text())
    assert report["ps"] == report["workers"] == 2
    variants = report["tables"]["10000"]
    assert set(variants) == {"none", "hook"}
    for variant in variants.values():
        assert variant["steps_per_s"] > 0 and variant["ratio"] > 0
        if sys.platform.startswith("linux"):  # CPU time from /proc, by role
            assert variant["ps_cpu_ms_per_step"] > 0 < variant["training_cpu_ms_per_step"]


def test_a_baseline_copy_runs_its_own_modules(tmp_path):
    # The package imports its public names' modules on first use: they, and the
    # private modules dense_update.py builds from, must come from the baseline.
    baseline = tmp_path / "baseline"
    shutil.copytree(os.path.dirname(_ema.__file__), str(baseline / "estimator_ema"))
    script = ("import sys; sys.path.insert(0, %r); import throughput; "
              "throughput.load_baseline(%r); copy = throughput.PACKAGES['@baseline']; "
              "print(copy.hooks.__file__); "
              "print(copy.ExponentialMovingAverageHook.__init__.__code__.co_filename); "
              "print(copy._ema.__file__); print(copy._options.__file__)"
              % (BENCHMARKS, str(baseline)))
    out = subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), check=True,
                         timeout=300, stdout=subprocess.PIPE)
    files = out.stdout.decode().split()
    assert len(files) == 4 and all(f.startswith(str(baseline)) for f in files), files


def test_cluster_in_process_times_each_variant_and_a_baseline_copy(tmp_path):
    # Servers of one process; --baseline builds the hook and decorator variants
    # a second time with the package of a checkout (here this one).
    out = tmp_path / "in_process.json"
    source = os.path.dirname(BENCHMARKS)
    _run("cluster_in_process.py", tmp_path, "--quick", "--baseline", source, "--json", str(out))
    variants = json.loads(out.read_text())["variants"]
    assert set(variants) == {"none", "hook", "with_ema", "hook@baseline", "with_ema@baseline"}
    for variant in variants.values():
        assert variant["cpu_ms_per_step"] > 0 and variant["ratio"] > 0
