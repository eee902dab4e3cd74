"""Every public name is documented in the Google style the README promises."""

import os
import re

import pytest

import estimator_ema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLIC = [name for name in estimator_ema.__all__ if not name.startswith("__")]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_has_a_google_style_docstring(name):
    doc = getattr(estimator_ema, name).__doc__ or ""
    summary = doc.strip().splitlines()[0] if doc.strip() else ""
    assert summary.endswith("."), "%s needs a one-line summary" % name
    assert "Args:" in doc, "%s needs an Args: section" % name


def _quickstart_blocks():
    with open(os.path.join(REPO, "README.md")) as handle:
        text = handle.read()
    section = re.search(r"^## Quickstart$(.*?)^## ", text, re.S | re.M).group(1)
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def test_quickstart_has_two_blocks_and_ci_runs_its_test_command():
    blocks = _quickstart_blocks()
    assert len(blocks) == 2
    assert "estimator-ema demo" in blocks[0]
    test_command = blocks[1].strip()
    assert test_command == ".venv/bin/pytest"
    with open(os.path.join(REPO, ".ci", "run")) as handle:
        assert '&& pytest "$@")' in handle.read()
