"""What tf.distribute strategies the averaging supports, checked at graph build.

Estimator's parameter-server training (TF_CONFIG, between-graph replication)
is supported: every task builds the averages beside their variables. Of the
in-graph strategies (`RunConfig(train_distribute=...)`), a MirroredStrategy
over one device works with the decorators; over several replicas Estimator
itself hung here (TF 2.15, two logical CPUs, without any averaging), so the
averaging refuses it rather than build a graph that cannot run.
"""

import json
import os

from estimator_ema._compat import tf


def _strategy():
    return tf.distribute.get_strategy() if tf.distribute.has_strategy() else None


def check_hook_strategy(hook_name):
    """Raises RuntimeError when a hook would run under a tf.distribute strategy."""
    strategy = _strategy()
    if strategy is not None:
        raise RuntimeError(
            "%s cannot average variables that %s mirrors (RunConfig(train_distribute=...)); "
            "use the with_ema / with_swa decorator with a single-device strategy, or "
            "parameter-server training through TF_CONFIG." % (hook_name, type(strategy).__name__))


def check_decorator_strategy():
    """Raises ValueError when a decorated model_fn runs on several mirrored replicas."""
    strategy = _strategy()
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        raise ValueError(
            "with_ema / with_swa support a tf.distribute strategy over one replica only (got "
            "%s over %d replicas); Estimator with several mirrored replicas hangs in TF 2.15 "
            "even without averaging: use parameter-server training through TF_CONFIG."
            % (type(strategy).__name__, strategy.num_replicas_in_sync))


def training_tasks():
    """How many tasks of the TF_CONFIG cluster train (chief, master and workers);
    None without a TF_CONFIG cluster."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster") or {}
    except ValueError:
        return None
    if not cluster:
        return None
    return sum(len(cluster.get(job) or []) for job in ("chief", "master", "worker"))
