"""The image fuzzer (zdtm/imagefuzz.py) with a fixed seed, bounded: real images of two trees
(tests/imagefuzz_trees.py: mounts, binds, peer groups, a FIFO and symlink in an archive, a user
namespace, unix listeners, a pipe) mutated 100 times, each validated and, when the validator takes
it (or one in 8 of those it refuses, and every hostile archive), restored in a throwaway mount
namespace: never a traceback or internal error, exit 0 or 2 with one line, no mount or process
left, nothing changed beside the image (a canary tree), in /etc/shadow or in the image itself.

The seed fixes the choices; the images are dumped afresh (their pids and mount ids differ run to
run), so the values differ a little. A finding line names the seed and the mutation's number:
`python3 -m zdtm.imagefuzz run --seed 33 --only N -v IMAGE...` replays it on images of those trees.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from zdtm import imagefuzz

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED, COUNT = 33, 100


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """The basic and userns trees of tests/imagefuzz_trees.py, dumped."""
    if os.geteuid() != 0:
        pytest.skip("the image fuzzer dumps real trees and restores (root)")
    import enginecase
    import imagefuzz_trees
    c = enginecase.EngineCase(tmp_path_factory.mktemp("fuzz"))
    out = []
    try:
        for name in ("basic", "userns"):
            img = os.path.join(c.workdir, name)
            c.dump(c.start(imagefuzz_trees.TREES[name]), img)
            with open(img + ".externals", "w") as f:
                f.write('["--external", "mnt[usr]:/usr", "--external", "mnt[etc]:/etc"]')
            out.append(img)
        yield out
    finally:
        c.close()


def test_fixed_seed_campaign_finds_nothing(images, tmp_path):
    r = subprocess.run([sys.executable, "-m", "zdtm.imagefuzz", "run", "--seed", str(SEED), "--count", str(COUNT),
                        "--restore-every", "8", "--work", str(tmp_path / "work"), *images],
                       capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=600, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, PYTHONPATH=PROJECT_ROOT))
    summary = r.stdout.strip().splitlines()[-1:] or [r.stderr]
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{COUNT} mutations" in summary[0] and "0 findings" in summary[0], summary
    restored = int(summary[0].split(" restored")[0].rsplit(" ", 1)[1])
    assert restored >= COUNT // 10, f"too few mutations reached restore: {summary[0]}"


def test_a_crash_in_the_validator_is_a_finding(monkeypatch, tmp_path):
    """What the campaign counts as a finding: an exception other than ImageError."""
    from engine import image

    def boom(path):
        raise KeyError("mounts")
    monkeypatch.setattr(image, "load", boom)
    assert imagefuzz.validate_in_process(str(tmp_path)) == "crash: KeyError: 'mounts'"


def test_the_canary_digest_sees_a_write_a_mode_and_a_link(tmp_path):
    canary = str(tmp_path / "canary")
    imagefuzz.make_canary(canary)
    before = imagefuzz.tree_digest(canary)
    for change in (lambda: open(os.path.join(canary, "f"), "a").write("x"),
                   lambda: os.chmod(os.path.join(canary, "x"), 0o4755),
                   lambda: os.link(os.path.join(canary, "f"), str(tmp_path / "h"))):
        change()
        after = imagefuzz.tree_digest(canary)
        assert after != before
        before = after
