"""engine/image.py ImageWriter.commit: every archive is on disk before the manifest names it."""

import os

from engine import image, imageformat


def test_commit_fsyncs_every_archive_before_the_manifest(tmp_path, monkeypatch):
    """Archives written by any step (content archives, ghosts', detached mounts') are fsync'ed by
    the commit, before mntcr.json.part is written: a host crash after the commit never leaves a
    manifest naming an archive whose data was never written."""
    monkeypatch.setattr(imageformat, "validate", lambda doc: None)   # (the document is not the point)
    writer = image.ImageWriter(str(tmp_path / "img"))
    names = []
    for data in (b"first", b"second"):
        name, path = writer.new_archive()
        with open(path, "wb") as f:
            f.write(data)
        names.append(name)
    writer.new_archive()   # (a name taken and never written: passed over)
    events = []
    real_fsync, real_open = os.fsync, open

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def opened(path, *a, **k):
        events.append(("open", os.path.basename(str(path))))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(image, "open", opened, raising=False)   # (a module global before the builtin)
    writer.commit({})
    synced = [n for e, n in events if e == "fsync"]
    assert set(names) <= set(synced), events
    manifest_at = events.index(("open", image.MANIFEST + ".part"))
    assert all(events.index(("fsync", n)) < manifest_at for n in names), events
    assert sorted(os.listdir(tmp_path / "img")) == sorted(names + [image.MANIFEST])
