"""The documentation: every public name has a Google-style docstring and an API
page, and the code of every page runs (or says why it cannot)."""

import ast
import glob
import os
import re
import subprocess
import sys

import pytest

import estimator_ema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "docs")
PUBLIC = [name for name in estimator_ema.__all__ if not name.startswith("__")]
PAGES = sorted(os.path.relpath(path, DOCS)
               for path in glob.glob(os.path.join(DOCS, "**", "*.md"), recursive=True))
# A fenced block: its opening line (with what stands right before it) and its text.
BLOCK = re.compile(r"(?:<!-- not run: (?P<reason>[^>]*?) -->\n)?^```(?P<lang>\w*)\n"
                   r"(?P<code>.*?)^```$", re.S | re.M)
SNIPPET = re.compile(r'^--8<-- "(?P<name>[^"]+)"$', re.M)
PACKAGE = os.path.dirname(os.path.abspath(estimator_ema.__file__))
RUN = {"python": lambda code: code,
       "bash": lambda code: "subprocess.run(['bash', '-ec', %r], check=True)\n" % code}


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


def _blocks(page):
    """`(language, code, reason not run or None)` of each fenced block of `page`,
    with `--8<-- "name"` lines replaced by `docs/snippets/<name>` as MkDocs does."""
    with open(os.path.join(DOCS, page)) as handle:
        text = handle.read()
    return [(m.group("lang"), SNIPPET.sub(_snippet, m.group("code")), m.group("reason"))
            for m in BLOCK.finditer(text)]


def _snippet(match):
    with open(os.path.join(DOCS, "snippets", match.group("name"))) as handle:
        return handle.read()


def _script(page):
    """The page's runnable blocks, in order, as one Python program."""
    parts = ["import subprocess\n"]
    for lang, code, reason in _blocks(page):
        if lang in RUN and reason is None:
            parts.append(RUN[lang](code))
    return "\n".join(parts)


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_has_an_api_page(name):
    module = estimator_ema._MODULES[name]
    with open(os.path.join(DOCS, "api", name + ".md")) as handle:
        assert "::: estimator_ema.%s.%s\n" % (module, name) in handle.read()


@pytest.mark.parametrize("page", PAGES)
def test_every_code_block_is_run_or_says_why_not(page):
    for lang, code, reason in _blocks(page):
        assert lang in ("python", "bash", "text"), (
            "%s: a block needs a language: python or bash (run), text (output)" % page)
        assert reason is None or reason.strip(), "%s: say why a block is not run" % page


@pytest.mark.parametrize("page", [p for p in PAGES if _script(p).count("\n") > 1])
def test_page_code_runs(page, tmp_path):
    """Each page's code in a fresh interpreter, in an empty directory, on the
    installed package; the console script `estimator-ema` on the PATH."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep
               + os.environ.get("PATH", ""))
    result = subprocess.run([sys.executable, "-c", _script(page)], capture_output=True,
                            text=True, timeout=600, cwd=str(tmp_path), env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]


def _readme_section(title):
    with open(os.path.join(REPO, "README.md")) as handle:
        text = handle.read()
    return re.search(r"^## %s$(.*?)(?=^## |\Z)" % title, text, re.S | re.M).group(1)


def test_readme_is_the_front_door_into_every_guide():
    with open(os.path.join(REPO, "README.md"), "rb") as handle:
        assert len(handle.read()) <= 12 * 1024
    linked = set(re.findall(r"\]\(docs/([^)#]+)\)", _readme_section("Documentation")))
    assert linked == {p for p in PAGES if p.startswith("guides/")} | {
        "examples.md", "troubleshooting.md", "api/index.md"}


def test_ci_builds_the_docs_as_the_readme_says():
    commands = "".join(re.findall(r"```bash\n(.*?)```", _readme_section("Development"), re.S))
    assert "pip install '.[docs]'" in commands
    assert "mkdocs build --strict" in commands
    with open(os.path.join(REPO, ".ci", "run")) as handle:
        assert re.search(r"^ *build_docs docs-py311$", handle.read(), re.M)


def _error_messages():
    """`(where, message)` of each error message in the installed package: the
    literal first argument of a `...Error(...)` call, and each literal that a
    `..._message()` function returns; `%s`, `%r` and `%d` stand for values."""
    found = []
    for path in sorted(glob.glob(os.path.join(PACKAGE, "*.py"))):
        with open(path) as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and node.args and _name(node.func).endswith("Error"):
                messages = [node.args[0]]
            elif isinstance(node, ast.FunctionDef) and node.name.endswith("_message"):
                messages = [n.value for n in ast.walk(node) if isinstance(n, ast.Return)]
            else:
                continue
            for message in messages:
                if isinstance(message, ast.BinOp):  # "..." % values
                    message = message.left
                text = _string(message)
                if text is not None:
                    found.append(("%s:%d" % (os.path.basename(path), message.lineno), text))
    return found


def _string(node):
    """The value of a string literal (`ast.Str` on Python 3.7), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return node.s if sys.version_info < (3, 8) and isinstance(node, ast.Str) else None


def _name(func):
    return getattr(func, "id", None) or getattr(func, "attr", "")


def test_the_error_messages_are_found():
    assert len(_error_messages()) > 50


@pytest.mark.parametrize("where, message", _error_messages(),
                         ids=[where for where, _ in _error_messages()])
def test_every_error_message_is_on_the_troubleshooting_page(where, message):
    with open(os.path.join(DOCS, "troubleshooting.md")) as handle:
        page = " ".join(handle.read().split())
    for piece in re.split(r"%[rsd]", message):
        piece = " ".join(piece.split())
        assert len(piece) < 13 or piece in page, (where, piece)
