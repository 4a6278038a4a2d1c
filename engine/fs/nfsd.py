"""nfsd: the NFS server's control filesystem (exports, threads, versions...), no files of its own to
dump: what it shows is the server state of a network namespace, which restore mounts again from a
stand-in living in the equivalent restored one (CRIU's zdtm mnt_enablefs mounts it, with
--enable-fs nfsd)."""

from engine.fs import FsType, register

TYPE = register(FsType("nfsd", ns="net", joins_by_ns=True, requires=("nfsd",)))
