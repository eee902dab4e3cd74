"""The one place that imports TensorFlow and checks that it is supported.

Importing this module changes no global TensorFlow state: it only imports
TensorFlow and reads its version.
"""

import sys

SUPPORTED = "TensorFlow 1.15 on Python 3.7, or TensorFlow 2.4 to 2.15 on Python 3.8+"


def _install_hint():
    if sys.version_info < (3, 8):
        return "pip install 'estimator-ema[tf1]'"
    return "pip install 'estimator-ema[cpu]'"


def _unsupported(found):
    return ImportError(
        "estimator-ema needs %s (tf.estimator was removed in 2.16); found %s. "
        "Install a supported TensorFlow with: %s" % (SUPPORTED, found, _install_hint()))


def _parse_version(text):
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_version(text):
    """Raises ImportError unless `text` names a supported TensorFlow version."""
    major_minor = _parse_version(text)
    if major_minor == (1, 15) or (2, 4) <= major_minor <= (2, 15):
        return
    raise _unsupported("TensorFlow %s" % text)


try:
    import tensorflow as _tf
except ImportError as error:  # pragma: no cover - exercised in a bare venv
    raise _unsupported("no TensorFlow (%s)" % error) from None

check_version(_tf.__version__)

tf = _tf.compat.v1
"""`tf.compat.v1`: everything in this package builds TF1-style graphs."""

tf_estimator = _tf.estimator
ESTIMATOR_CLASSES = (_tf.estimator.Estimator, _tf.compat.v1.estimator.Estimator)
"""Every Estimator base class: in TF 2 the v1 Estimator is not a tf.estimator.Estimator."""
Variable = _tf.Variable
IS_TF1 = _tf.__version__.startswith("1.")
VERSION = _parse_version(_tf.__version__)
"""TensorFlow's (major, minor)."""
