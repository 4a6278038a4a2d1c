#!/usr/bin/env bash
# Install what mntcr needs (Debian packages, Python packages) and run one job.
#   ./run.sh scenarios [PYTEST ARGS...]   the scenario library (pytest scenarios/), ns flavor on this kernel
#   ./run.sh tests     [PYTEST ARGS...]   the project's own tests (tests/)
# Needs root (mount namespaces, mounts); a fresh Debian 12 machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")"
job="${1:-}"; shift || true
case "$job" in
  scenarios|tests) ;;
  *) echo "usage: $0 scenarios|tests [pytest args...]" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "run.sh: must run as root (it creates mount namespaces and mounts inside them)" >&2; exit 2
fi

# Debian packages: GNU tar (tmpfs contents), util-linux (unshare, nsenter, findmnt), graphviz (reports),
# chromium (the report test loads a page in headless Chromium),
# mkfs tools, squashfs and squashfuse (the fuse battery) for the filesystem scenarios and the --fstype battery, qemu + busybox for the VM flavor, debootstrap for criu
# and the Vagrant box, vagrant + vagrant-libvirt + libvirt for the Vagrant provider, the container runtimes
# of scenarios/runtimes/ (runc crun podman lxc bubblewrap systemd-container docker.io firejail schroot buildah
# charliecloud-runtime rootlesskit fuse-overlayfs slirp4netns docker-compose lxd distrobox podman-toolbox; containerd comes with docker.io, lxcfs with lxd), the container inits of
# scenarios/fds/container_inits.yaml (tini dumb-init catatonit), uidmap (newuidmap for the
# rootless scenarios in scenarios/userns/ and scenarios/runtimes/), the real programs of
# scenarios/fds/real_programs.yaml (tmux, dbus-daemon, socat) and scenarios/fds/apps.yaml (nginx, lighttpd,
# redis-server, screen, sqlite3, inotify-tools, curl), gcc, make and libc6-dev (CRIU's real zdtm
# tests, built statically from Debian's criu source package: tests/test_criu_real.py), the servers of
# scenarios/fds/servers.yaml (installed sizes, with their libraries: openssh-server 2 MB, memcached 0.6,
# haproxy 4, dnsmasq-base 1, rsyslog 2, apache2 6, supervisor 2, runit 0.6, prometheus-node-exporter 13),
# iputils-ping (scenarios/fds/ping_loop.yaml: ping on ICMP ping sockets; busybox's makes raw ones only),
# nftables and iptables (nft, iptables-nft-save/-restore: a network namespace's firewall, engine/netfilter.py;
# nftables' own service is not enabled by its package, and policy-rc.d keeps it from starting),
# flatpak (scenarios/runtimes/flatpak.yaml), the databases of scenarios/runtimes/app_containers.yaml and scenarios/fds/daemons.yaml (postgresql-15 25 MB,
# mariadb-server 100 MB with its client), and the headers CRIU's zdtm tests build with (libcap-dev:
# thread_different_uid_gid; libaio-dev: aio00; libnl-3-dev, libnl-route-3-dev: netns_sub_veth; libbpf-dev:
# bpf_hash, bpf_array, tests/test_criu_real.py).
pkgs=(tar util-linux mount procps graphviz e2fsprogs xfsprogs btrfs-progs squashfs-tools fuse3 squashfuse
      erofs-utils dosfstools exfatprogs f2fs-tools nfs-kernel-server
      qemu-system-x86 busybox-static debootstrap cpio kmod zstd xz-utils bindfs attr
      vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-utils openssh-client rsync
      runc crun podman lxc bubblewrap systemd-container docker.io firejail schroot
      buildah charliecloud-runtime rootlesskit fuse-overlayfs slirp4netns docker-compose lxd distrobox podman-toolbox tini dumb-init catatonit uidmap chromium tmux dbus-daemon socat
      nginx lighttpd redis-server screen sqlite3 inotify-tools curl gcc make libc6-dev
      openssh-server memcached haproxy dnsmasq-base rsyslog apache2 supervisor runit prometheus-node-exporter
      iputils-ping nftables iptables postgresql-15 mariadb-server flatpak
      libcap-dev libbpf-dev libaio-dev libnl-3-dev libnl-route-3-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "run.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The servers among them (nginx, lighttpd, redis-server, dockerd, containerd, sshd, memcached, haproxy,
  # rsyslogd, apache2, supervisord, node_exporter, postgres, mariadbd, lxd and lxcfs; schroot's session recovery) run only inside scenarios: a policy-rc.d for the
  # install's time keeps their packages from starting them as the machine's services.
  # Made with noclobber (O_EXCL: a file, or a symlink even dangling, already there is the admin's
  # and stays as it is), and removed only when this run made it.
  policy=
  trap 'if [ -n "$policy" ]; then rm -f "$policy"; fi' EXIT
  if (set -C; printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d) 2>/dev/null; then
    policy=/usr/sbin/policy-rc.d; chmod 755 "$policy"
  elif [ ! -e /usr/sbin/policy-rc.d ] && [ ! -L /usr/sbin/policy-rc.d ]; then
    echo "run.sh: cannot make /usr/sbin/policy-rc.d (it keeps the servers installed from starting)" >&2; exit 1
  fi
  # A mirror's transient error (a timeout, a 5xx, a sync in progress: "Hash Sum mismatch") must not
  # fail a CI run: apt retries each download, and the whole update+install is tried 3 times.
  for try in 1 2 3; do
    if apt-get -o Acquire::Retries=5 update -qq && \
       apt-get -o Acquire::Retries=5 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      break
    fi
    if [ "$try" -eq 3 ]; then
      echo "run.sh: apt-get could not install the packages after 3 tries (see the errors above): check the machine's apt mirror" >&2
      exit 1
    fi
    echo "run.sh: apt-get failed (try $try of 3), trying again in $((try * 20)) s" >&2
    sleep $((try * 20))
  done
  if [ -n "$policy" ]; then rm -f "$policy"; trap - EXIT; fi
  # Their packages also enable them for the next boot (systemd): not the machine's services either.
  # systemctl disable works without a running systemd (it removes the units' links).
  if command -v systemctl >/dev/null; then
    for s in nginx lighttpd redis-server schroot docker.io openssh-server memcached haproxy rsyslog apache2 supervisor \
             prometheus-node-exporter postgresql-15 mariadb-server lxd; do
      case " ${missing[*]} " in *" $s "*) ;; *) continue ;; esac
      # docker.io's units are docker.service, docker.socket and containerd.service; the others' as named
      case "$s" in
        docker.io) units="docker.service docker.socket containerd.service" ;;
        openssh-server) units="ssh.service ssh.socket" ;;
        apache2) units="apache2.service apache-htcacheclean.service" ;;
        postgresql-15) units="postgresql.service postgresql@15-main.service" ;;
        mariadb-server) units="mariadb.service" ;;
        lxd) units="lxd.service lxd.socket lxcfs.service" ;;
        *) units="$s.service" ;;
      esac
      for u in $units; do systemctl disable --quiet "$u" 2>/dev/null || true; done
    done
  fi
fi
# pip's failure fails the run (a missing test dependency would only show as errors much later);
# its own retries and a longer timeout ride out a slow or flaky index, then 3 tries in all.
for try in 1 2 3; do
  out=$(python3 -m pip install -q --disable-pip-version-check --retries 5 --timeout 60 -e '.[test]' 2>&1) && rc=0 || rc=$?
  printf '%s\n' "$out" | grep -v -e "Running pip as the 'root' user" -e '^$' >&2 || true
  [ "$rc" -eq 0 ] && break
  if [ "$try" -eq 3 ]; then
    echo "run.sh: pip could not install mntcr's Python dependencies after 3 tries (exit $rc, see above)" >&2
    exit 1
  fi
  echo "run.sh: pip failed (exit $rc, try $try of 3), trying again in $((try * 20)) s" >&2
  sleep $((try * 20))
done
# An editable install leaves byte-compiling to the first import, which PYTHONDONTWRITEBYTECODE
# forbids: every mntcr run would compile the engine again (as a wheel install does, compile once).
python3 -m compileall -q engine zdtm vm >/dev/null

if [ "$job" = scenarios ]; then
  exec python3 -m pytest scenarios/ -n 2 "$@"
else
  exec python3 -m pytest tests/ -n 2 "$@"
fi
