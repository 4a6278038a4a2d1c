"""engine/cliargs.py reads a plain dump or restore command line as argparse does, and leaves the rest to it."""

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings, strategies as st

from engine import cli, cliargs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _verb_parser(verb):
    parser = cli.build_parser(extras=False, only=verb)
    return parser, parser._subparsers._group_actions[0].choices[verb]


def _argparse(argv):
    """vars() of argparse's reading, or None where it refuses (or prints help)."""
    parser, _ = _verb_parser(argv[0])
    try:
        return vars(parser.parse_args(argv))
    except SystemExit:
        return None


@pytest.mark.parametrize("verb", sorted(cliargs.VERBS))
def test_table_is_the_parsers(verb):
    _, sub = _verb_parser(verb)
    seen = {}
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        kind = ("flag" if action.nargs == 0 else "append" if type(action).__name__ == "_AppendAction"
                else tuple(action.choices) if action.choices else "int" if action.type is int else "str")
        assert action.type in (None, int)
        for o in action.option_strings:
            seen[o] = (action.dest, kind)
        assert cliargs.DEFAULTS[verb][action.dest] == action.default, action.dest
        assert (action.dest in cliargs.REQUIRED[verb]) == action.required, action.dest
    assert seen == cliargs.VERBS[verb]
    assert set(cliargs.DEFAULTS[verb]) == {d for d, _ in seen.values()}


PLAIN = [
    ["restore", "-D", "img"],
    ["restore", "--images-dir=img", "--pidfile", "p", "--devices", "all", "--external", "mnt[usr]:/usr",
     "--external=mnt[etc]:/etc=x", "--root", "/r", "--fuse-restart", "sq=squashfuse -f {source} {conn}",
     "--allow-idmap", "root"],
    ["restore", "-D", "a", "-D", "b", "--devices", "none", "--devices", "container"],
    ["dump", "-t", "12", "-D", "img"],
    ["dump", "--tree", " 7 ", "--images-dir", "x y", "--leave-running", "--shell-job", "--external", "mnt[/a]:k"],
    ["dump", "-D", "img", "--tree=1_000", "--leave-running", "--leave-running"],
]


@pytest.mark.parametrize("argv", PLAIN, ids=lambda a: " ".join(a)[:60])
def test_plain_lines_read_as_argparse_reads_them(argv):
    fast = cliargs.parse(argv)
    assert fast is not None
    assert vars(fast) == _argparse(argv)


LEFT = [
    ["restore"], ["restore", "-h"], ["restore", "--help"], ["restore", "-D"], ["restore", "-Dimg"],
    ["restore", "--images", "img"], ["restore", "-D", "img", "--devices", "most"],
    ["restore", "-D", "img", "--pidfile", "-p"], ["restore", "-D", "img", "--pidfile="], ["restore", "-D", "-1"],
    ["restore", "-D", "img", "extra"], ["restore", "-D", "img", "--", "x"], ["restore", "-D=img"],
    ["dump", "-D", "img"], ["dump", "-t", "x", "-D", "img"], ["dump", "-t", "-5", "-D", "img"],
    ["dump", "-t", "1", "-D", "img", "--leave-running=yes"], ["dump", "-t", "1", "-D", "img", "--leave"],
    ["show", "-D", "img"], [],
]


@pytest.mark.parametrize("argv", LEFT, ids=lambda a: " ".join(a)[:60] or "empty")
def test_anything_else_is_left_to_argparse(argv):
    assert cliargs.parse(argv) is None


_WORDS = sorted({o for opts in cliargs.VERBS.values() for o in opts}) + [
    "-h", "--", "-", "-5", "5", "", "x", "all", "none", "container", "bogus", "a=b", "--images", "--tree=3",
    "--images-dir=", "--images-dir=d", "-Dd", "-D=d", "--leave-running=1", "--devices=all", "mnt[a]:/b", " 9"]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(cliargs.VERBS)), st.lists(st.sampled_from(_WORDS), max_size=7))
def test_fast_reading_never_differs(verb, words):
    argv = [verb, *words]
    fast = cliargs.parse(argv)
    if fast is not None:
        assert vars(fast) == _argparse(argv)


def test_a_restore_line_loads_no_argparse():
    # (a refused restore: an image directory that does not exist; nothing is touched)
    code = ("import sys; from engine import cli; "
            "rc = cli._main(['restore', '-D', '/nonexistent/mntcr-img', '--devices', 'all']); "
            "print(rc, 'argparse' in sys.modules, 'gettext' in sys.modules)")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False", "False"], out.stderr
    assert "mntcr restore:" in out.stderr
