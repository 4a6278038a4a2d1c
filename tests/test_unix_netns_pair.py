"""A connection whose client connected through a socket file from another network namespace: the
kernel makes its server end in the client's namespace, so the holder of the client end makes the
pair again (engine/fds/unix_pair.py `settle`, `via["maker"]`); the image validator takes `maker`
only as an end of a path-named pair. (scenarios/fds/netns_peers.yaml runs the real case.)"""

from __future__ import annotations

import pytest

from engine import image
from engine.fds import FdError, unix_check, unix_pair


def _pair(**via):
    return {"kind": "unix", "type": "stream", "data": ["", ""], "via": {"end": 1, "path": "/run/s.sock", **via}}


def test_settle_makes_client_holder_the_maker():
    objects = {"unixpair-1-5-6": {**_pair(), "_home": [True, False]}}
    unix_pair.settle(objects)
    assert objects["unixpair-1-5-6"]["via"]["maker"] == 0
    assert "_home" not in objects["unixpair-1-5-6"]


def test_settle_leaves_a_pair_of_its_accepted_holders_namespace():
    objects = {"unixpair-1-5-6": {**_pair(), "_home": [True, True]}}
    unix_pair.settle(objects)
    assert "maker" not in objects["unixpair-1-5-6"]["via"]


def test_settle_refuses_a_pair_no_holder_of_its_namespace_holds():
    with pytest.raises(FdError, match="other network namespaces"):
        unix_pair.settle({"unixpair-1-5-6": {**_pair(), "_home": [False, False]}})


@pytest.mark.parametrize("via", [{"maker": 2}, {"maker": "0"}])
def test_validator_refuses_a_bad_maker(via):
    with pytest.raises(image.ImageError, match="bad listener name"):
        unix_check.check_object(_pair(**via), "object x")


def test_validator_refuses_a_maker_of_an_abstract_pair():
    obj = {"kind": "unix", "type": "stream", "data": ["", ""], "via": {"end": 1, "abstract": "YQ==", "maker": 0}}
    with pytest.raises(image.ImageError, match="bad listener name"):
        unix_check.check_object(obj, "object x")


def test_validator_takes_a_maker():
    unix_check.check_object(_pair(maker=0), "object x")
