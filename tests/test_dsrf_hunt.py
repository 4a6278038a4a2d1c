import os
import random
import pytest
import enginecase
from enginecase import case, CRError  # noqa: F401
from zdtm import randomtree

KINDS = ["tmpfs", "tmpfs", "bind", "bind", "rbind", "shared", "slave", "private", "over", "over", "move",
         "file", "cd", "cd", "flag", "dir", "mode", "overlay"]
END = ("exec unshare -U -r -m --propagation unchanged sh -c "
       "'exec </dev/null >/dev/null 2>&1; exec /.hold/mntcr-hold 1000000' </dev/null >/dev/null 2>&1\n")


@pytest.mark.parametrize("seed", range(int(os.environ.get("HUNT_FROM", 0)), int(os.environ.get("HUNT_TO", 10))))
def test_hunt(case, seed):
    rnd = random.Random(seed)
    ops = [(rnd.choice(KINDS), rnd.randrange(16), rnd.randrange(16)) for _ in range(rnd.randrange(3, 12))]
    setup = randomtree.render_setup(ops).replace("exec zdtm-hold\n", END)
    print(ops)
    try:
        pid = case.start(setup, host_pidns=True)
    except enginecase.SetupError:
        pytest.skip("setup")
    before = enginecase.take(pid)
    images = case.new_images_dir()
    try:
        case.dump(pid, images)
    except CRError as e:
        pytest.skip(f"dump refused: {e}")
    restored = case.restore(images)
    enginecase.assert_same(before, enginecase.take(restored))
