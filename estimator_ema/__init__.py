"""Weight averaging (EMA and SWA) for TensorFlow Estimators.

The public names are imported from their modules on first use, so
`import estimator_ema` alone (and `estimator-ema --help`) does not import
TensorFlow; the first name used imports it and checks its version
(`from estimator_ema import with_ema` raises ImportError on an unsupported one).
"""

import importlib

from estimator_ema._version import __version__

_MODULES = {
    "AveragedBestExporter": "export",
    "AveragedExporter": "export",
    "AveragedFinalExporter": "export",
    "ExponentialMovingAverageHook": "hooks",
    "InMemoryEvaluatorHook": "evaluating",
    "StochasticWeightAveragingHook": "hooks",
    "average_tensors": "reading",
    "averaged_estimator": "export",
    "export_saved_model": "export",
    "read_averages": "reading",
    "restore_averages": "restoring",
    "update_batch_norm": "batch_norm",
    "warm_start_from_averages": "warm_start",
    "with_ema": "model_fn",
    "with_swa": "model_fn",
    "write_averaged_checkpoint": "rewriting",
}
"""Each public name and the module (`estimator_ema.<module>`) that defines it."""

__all__ = ["__version__"] + sorted(_MODULES)


def __getattr__(name):
    if name not in _MODULES:
        raise AttributeError("module 'estimator_ema' has no attribute %r" % (name,))
    value = getattr(importlib.import_module("estimator_ema." + _MODULES[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
