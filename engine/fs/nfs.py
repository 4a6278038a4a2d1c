"""nfs, nfs4: a network filesystem from a server outside the dumped tree; restore mounts it again
from the same server.

Nothing of its files is dumped: the server keeps them. The superblock belongs to the network
namespace it was mounted from (the client's sockets live there), so restore makes it from a
stand-in in the equivalent restored namespace (`ns = "net"`), with the dumped source
("server:/path") and the options mountinfo shows: `addr=` (and `clientaddr=`, `mountaddr=`)
are the numeric addresses mount.nfs resolved, which fsconfig takes back as they are. Mountinfo
shows every NFS mount's root as "/" and the path in the source ("127.0.0.1:/d" for a bind of
d): `mount_root` turns that into the root below the superblock's shallowest mount (`sb_source`). A server
that is gone, or unreachable from the restored namespace, fails the restore naming the mount.

The battery recipe is an external server: the kernel's NFS server (nfsd, rpc.mountd, exportfs
of a tmpfs) in a network and mount namespace of its own that the runner starts before the
container and stops after the tree is gone (zdtm/fsserver.py). The container, the dump and the
restore share that network namespace, so the tree (only the client) mounts 127.0.0.1:/ and the
restored tree mounts it again from the same, still running, server. This machine's kernel has no
nfs/nfsd: it runs in the VM flavor (Debian's kernels have the modules) with nfs-kernel-server's
userland.
"""

import errno
import posixpath

from engine.fs import FsError, FsType, Recipe, register


class NfsType(FsType):
    """nfs/nfs4: mountinfo shows every mount's root as "/"; the path below the export is in the source."""

    def sb_source(self, sources: list[str]) -> str:
        """The shallowest path (a restored tree may list a bind of a file of the export first)."""
        def depth(src: str) -> int:
            path = posixpath.normpath(src.rpartition(":")[2] or "/").strip("/")
            return len(path.split("/")) if path else 0
        return min(sources, key=depth)   # min keeps the first of equal depth

    def mount_root(self, root: str, source: str, sb_source: str, where: str) -> str:
        """"host:/a/b" of a superblock first mounted from "host:/a" is its root "/b"."""
        host, _, path = source.rpartition(":")
        sb_host, _, sb_path = sb_source.rpartition(":")
        path, sb_path = posixpath.normpath(path or "/"), posixpath.normpath(sb_path or "/")
        rel = posixpath.relpath(path, sb_path)
        if host != sb_host or rel == ".." or rel.startswith("../"):
            raise FsError(errno.EOPNOTSUPP, f"{where}: {self.name} source {source} is not beneath {sb_source}, "
                                            "the shallowest source of its superblock (not supported)")
        return posixpath.normpath(posixpath.join(root, rel)) if rel != "." else root

# In the server's own namespaces: its state on a tmpfs (never the host's /var/lib/nfs), the nfsd
# control filesystem of this network namespace, the export on a tmpfs at $SERVER. NFSv4 only
# (6.1's nfsd has no v2 to refuse: -N 2 fails), TCP only. No client-tracking daemon runs here, so
# the server keeps its grace period: -G 10, its shortest, instead of 90 s of NFS4ERR_GRACE retries.
_SERVER = """mount -t tmpfs -o mode=0755 nfsstate /var/lib/nfs
mkdir -p /var/lib/nfs/v4recovery
: > /var/lib/nfs/etab
mount -t nfsd nfsd /proc/fs/nfsd
mount -t tmpfs -o size=64m,mode=0755 nfsexp "$SERVER"
exportfs -o rw,no_root_squash,insecure,no_subtree_check,fsid=0 127.0.0.1:"$SERVER"
rpc.mountd -F -N 2 -N 3 </dev/null &
rpc.nfsd -N 3 -U -G 10 4"""

# nfsd's listening sockets hold the network namespace: without `rpc.nfsd 0` it (and the threads)
# would outlive the item.
_SERVER_STOP = """rpc.nfsd 0
exportfs -au"""

_RECIPE = Recipe(
    # soft (TCP default timeouts): a server that is gone fails a restore instead of hanging it
    make="""mount -t nfs4 -o vers=4.2,soft,timeo=600,retrans=2 127.0.0.1:/ "$FS"
cp -a "$SRC/." "$FS/"
sync""",
    commands=("exportfs", "rpc.nfsd", "rpc.mountd", "mount.nfs4"),
    server=_SERVER, server_stop=_SERVER_STOP)

register(NfsType("nfs", ns="net", requires=("nfs",)))
TYPE = register(NfsType("nfs4", ns="net", requires=("nfs4", "nfsd"), recipe=_RECIPE))
