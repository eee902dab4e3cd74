"""Which variables are averaged.

The default selection is every trainable variable plus the batch-norm moving
statistics (`moving_mean` / `moving_variance` of `tf.compat.v1.layers`, Keras
layers and tf_slim), so an averaged model also evaluates with averaged
statistics. `include` / `exclude` regexes (`re.search` on the variable's op
name) narrow any selection.
"""

import re

from estimator_ema import _checks
from estimator_ema._compat import Variable, tf

_BATCH_NORM_STATISTIC = re.compile(r"(^|/)moving_(mean|variance)$")


def is_batch_norm_statistic(var_name):
    """Whether `var_name` is a batch-norm `moving_mean` / `moving_variance`."""
    return bool(_BATCH_NORM_STATISTIC.search(var_name))


class Selection(object):
    """Validated `variables` / `include` / `exclude` options."""

    def __init__(self, variables=None, include=None, exclude=None):
        self.variables = _checks.check_variables(variables)
        self.include = _checks.check_patterns("include", include)
        self.exclude = _checks.check_patterns("exclude", exclude)

    def candidates(self, graph):
        """The variables before include/exclude: the default or the user's."""
        if self.variables is None:
            found = list(graph.get_collection(tf.GraphKeys.TRAINABLE_VARIABLES))
            seen = set(id(v) for v in found)
            for var in graph.get_collection(tf.GraphKeys.GLOBAL_VARIABLES):
                if is_batch_norm_statistic(var.op.name) and id(var) not in seen:
                    found.append(var)
            return found
        chosen = self.variables() if callable(self.variables) else self.variables
        if not isinstance(chosen, (list, tuple)):
            raise TypeError(
                "'variables' callable must return a list of variables (got %r)." % (chosen,))
        for var in chosen:
            if not isinstance(var, Variable):
                raise TypeError(
                    "'variables' must hold tf.Variable objects (got %r)." % (var,))
        return list(chosen)

    def select(self, graph, required=True):
        """The variables to average, in a stable order; raises if none remain,
        unless not `required`."""
        candidates = self.candidates(graph)
        chosen, seen = [], set()
        for var in candidates:
            name = var.op.name
            if self.include and not any(p.search(name) for p in self.include):
                continue
            if any(p.search(name) for p in self.exclude):
                continue
            if not var.dtype.base_dtype.is_floating:
                if self.variables is None:
                    continue
                raise TypeError(
                    "'variables' must hold floating-point variables (got %s of dtype %s)."
                    % (name, var.dtype.base_dtype.name))
            if id(var) not in seen:
                seen.add(id(var))
                chosen.append(var)
        if not chosen and required:
            raise ValueError(self._empty_message(candidates))
        return chosen

    def _empty_message(self, candidates):
        names = [v.op.name for v in candidates]
        if not names:
            source = "the default selection" if self.variables is None else "'variables'"
            return ("No variables to average: %s found no variables in the graph "
                    "(build the model before the averaging)." % source)
        unmatched = [p.pattern for p in self.include
                     if not any(p.search(n) for n in names)]
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        if unmatched:
            return ("No variables to average: 'include' pattern(s) %s matched none of "
                    "the %d candidate variables (%s)." % (unmatched, len(names), shown))
        return ("No variables to average: 'include'=%s and 'exclude'=%s leave none of the "
                "%d candidate variables (%s)."
                % ([p.pattern for p in self.include], [p.pattern for p in self.exclude],
                   len(names), shown))
