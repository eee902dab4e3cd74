"""Argument checks shared by every public entry point.

Every message has one format: it names the argument and the value, e.g.
``'decay' must be a float in [0, 1) (got 1.5).``
"""

import numbers
import re

from estimator_ema._compat import ESTIMATOR_CLASSES


def _describe(value):
    return "%r" % (value,)


def check_estimator(estimator, argument="estimator"):
    """Returns `estimator` if it is a v1 or v2 Estimator (canned ones included)."""
    if not isinstance(estimator, ESTIMATOR_CLASSES):
        raise TypeError("'%s' must be a tf.estimator.Estimator or a "
                        "tf.compat.v1.estimator.Estimator (got %s)."
                        % (argument, _describe(estimator)))
    return estimator


def check_decay(decay):
    """Returns `decay` as a float in [0, 1)."""
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real):
        raise TypeError("'decay' must be a float in [0, 1) (got %s)." % _describe(decay))
    if not 0.0 <= float(decay) < 1.0:
        raise ValueError("'decay' must be a float in [0, 1) (got %s)." % _describe(decay))
    return float(decay)


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError("'%s' must be True or False (got %s)." % (name, _describe(value)))
    return value


def check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError("'%s' must be a positive int (got %s)." % (name, _describe(value)))
    if value < 1:
        raise ValueError("'%s' must be a positive int (got %s)." % (name, _describe(value)))
    return int(value)


def check_non_negative_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError("'%s' must be a non-negative int (got %s)." % (name, _describe(value)))
    if value < 0:
        raise ValueError("'%s' must be a non-negative int (got %s)." % (name, _describe(value)))
    return int(value)


_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_name(name, argument="name"):
    """The shadow suffix: one name-scope component, as TF allows."""
    if not isinstance(name, str):
        raise TypeError("'%s' must be a non-empty string (got %s)."
                        % (argument, _describe(name)))
    if not _NAME_RE.match(name) or name.startswith(("-", ".")):
        raise ValueError(
            "'%s' must be a non-empty string of letters, digits, '_', '.' or '-' "
            "(got %s)." % (argument, _describe(name)))
    return name


def check_patterns(argument, patterns):
    """Returns a tuple of compiled regexes from None, a string or a list of strings."""
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = [patterns]
    elif not isinstance(patterns, (list, tuple)):
        raise TypeError(
            "'%s' must be a regex string or a list of them (got %s)."
            % (argument, _describe(patterns)))
    compiled = []
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(
                "'%s' must be a regex string or a list of them (got %s)."
                % (argument, _describe(pattern)))
        try:
            compiled.append(re.compile(pattern))
        except re.error as error:
            raise ValueError(
                "'%s' has an invalid regular expression %s: %s."
                % (argument, _describe(pattern), error)) from None
    return tuple(compiled)


def check_variables(variables):
    """`variables` is None, a list/tuple of variables, or a callable."""
    if variables is None or callable(variables):
        return variables
    if isinstance(variables, (list, tuple)):
        return tuple(variables)
    raise TypeError(
        "'variables' must be None, a list of variables or a callable returning one "
        "(got %s)." % _describe(variables))
