"""Weight averaging (EMA and SWA) for TensorFlow Estimators."""

from estimator_ema._version import __version__
from estimator_ema.batch_norm import update_batch_norm
from estimator_ema.reading import read_averages
from estimator_ema.restoring import restore_averages
from estimator_ema.rewriting import write_averaged_checkpoint
from estimator_ema.warm_start import warm_start_from_averages
from estimator_ema.export import AveragedExporter, averaged_estimator, export_saved_model
from estimator_ema.hooks import ExponentialMovingAverageHook, StochasticWeightAveragingHook
from estimator_ema.model_fn import with_ema, with_swa

__all__ = [
    "AveragedExporter",
    "ExponentialMovingAverageHook",
    "StochasticWeightAveragingHook",
    "__version__",
    "averaged_estimator",
    "export_saved_model",
    "read_averages",
    "restore_averages",
    "warm_start_from_averages",
    "write_averaged_checkpoint",
    "update_batch_norm",
    "with_ema",
    "with_swa",
]
