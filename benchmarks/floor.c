/*
 * The kernel floor for benchmarks/scale.py: build a mount tree from a precomputed
 * op list with nothing but the mount syscalls (no parsing of mountinfo, no
 * planning: benchmarks/floor.py turns an image into the op list beforehand).
 *
 *   floor OPS_FILE MOUNTINFO_OUT
 *
 * Runs in a fresh private mount namespace (unshare), reads every op into
 * memory, then times only the ops and prints "floor_ns N". Afterwards it
 * writes its own /proc/self/mountinfo (the built tree after pivot_root) to
 * MOUNTINFO_OUT so the caller can check the floor built the same tree.
 *
 * Ops, one a line (S = superblock slot, I/P = mount slot, REL = path relative
 * to a slot's root, "." for the root itself; no whitespace in paths):
 *   F S FSTYPE NOPTS [KEY VALUE]...   fsopen/fsconfig/fsmount (VALUE "-" = flag)
 *   T S HOSTPATH                      open_tree(CLONE) of a host path (externals)
 *   K S REL                           mkdir -p REL in superblock S (mount points)
 *   C I S REL                         open_tree(CLONE) of REL in superblock S
 *   A I SET CLR                       mount_setattr flags
 *   R I                               I becomes / (move_mount, pivot_root)
 *   M I P REL                         move_mount I onto REL of mount P
 *   G FROM TO                         move_mount MOVE_MOUNT_SET_GROUP
 *   P I PROPAGATION                   mount_setattr propagation (MS_SHARED...)
 *   O I PATH                          open(PATH, O_PATH) into mount slot I (a visible mount)
 *   X I                               close mount slot I
 *   Y S                               close superblock slot S
 *
 * floor.py interleaves creation, moves and closes so that only the fds still
 * needed are open (fd limits: an fd per mount does not fit RLIMIT_NOFILE).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_open_tree
#define SYS_open_tree 428
#define SYS_move_mount 429
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#define SYS_mount_setattr 442
#endif
#define X_OPEN_TREE_CLONE 1
#define X_AT_EMPTY_PATH 0x1000
#define X_MOVE_F_EMPTY 0x04
#define X_MOVE_T_EMPTY 0x40
#define X_MOVE_SET_GROUP 0x100
#define X_FSCONFIG_SET_FLAG 0
#define X_FSCONFIG_SET_STRING 1
#define X_FSCONFIG_CMD_CREATE 6

struct attr { uint64_t set, clr, prop, userns; };

struct op {
	char kind;
	int a, b;
	uint64_t x, y;
	char *s;      /* path or fstype */
	int nopts;
	char **kv;    /* 2 * nopts strings */
};

static void die(const char *what, const char *arg)
{
	fprintf(stderr, "floor: %s %s: %s\n", what, arg ? arg : "", strerror(errno));
	exit(1);
}

static int mkdir_p(int base, const char *rel)
{
	char buf[4096];
	if (strcmp(rel, ".") == 0)
		return 0;
	snprintf(buf, sizeof buf, "%s", rel);
	for (char *p = buf + 1; ; p++) {
		if (*p == '/' || *p == 0) {
			char c = *p;
			*p = 0;
			if (mkdirat(base, buf, 0755) && errno != EEXIST)
				return -1;
			if (!c)
				break;
			*p = c;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: floor OPS_FILE MOUNTINFO_OUT\n");
		return 2;
	}
	FILE *f = fopen(argv[1], "r");
	if (!f)
		die("open", argv[1]);
	int nops = 0, cap = 1024, nslots = 0, nsb = 0;
	struct op *ops = malloc(cap * sizeof *ops);
	char kind[4], s[4096];
	while (fscanf(f, "%3s", kind) == 1) {
		if (nops == cap)
			ops = realloc(ops, (cap *= 2) * sizeof *ops);
		struct op *o = &ops[nops++];
		memset(o, 0, sizeof *o);
		o->kind = kind[0];
		switch (o->kind) {
		case 'F':
			if (fscanf(f, "%d %4095s %d", &o->a, s, &o->nopts) != 3) goto bad;
			o->s = strdup(s);
			o->kv = calloc(2 * o->nopts + 1, sizeof(char *));
			for (int i = 0; i < 2 * o->nopts; i++) {
				if (fscanf(f, "%4095s", s) != 1) goto bad;
				o->kv[i] = strdup(s);
			}
			break;
		case 'T': case 'K': case 'O':
			if (fscanf(f, "%d %4095s", &o->a, s) != 2) goto bad;
			o->s = strdup(s);
			break;
		case 'C': case 'M':
			if (fscanf(f, "%d %d %4095s", &o->a, &o->b, s) != 3) goto bad;
			o->s = strdup(s);
			break;
		case 'A':
			if (fscanf(f, "%d %lu %lu", &o->a, &o->x, &o->y) != 3) goto bad;
			break;
		case 'R': case 'X': case 'Y':
			if (fscanf(f, "%d", &o->a) != 1) goto bad;
			break;
		case 'G':
			if (fscanf(f, "%d %d", &o->a, &o->b) != 2) goto bad;
			break;
		case 'P':
			if (fscanf(f, "%d %lu", &o->a, &o->x) != 2) goto bad;
			break;
		default:
			goto bad;
		}
		if (o->kind == 'F' || o->kind == 'T' || o->kind == 'K' || o->kind == 'Y') {
			if (o->a >= nsb) nsb = o->a + 1;
		} else if (o->a >= nslots) {
			nslots = o->a + 1;
		}
	}
	fclose(f);
	int *sb = calloc(nsb + 1, sizeof(int)), *m = calloc(nslots + 1, sizeof(int));

	/* Every mount and superblock stays open: lift the fd limit as far as allowed. */
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);

	if (unshare(CLONE_NEWNS))
		die("unshare", NULL);
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		die("make private", "/");
	int proc = open("/proc", O_PATH | O_DIRECTORY);
	int out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (proc < 0 || out < 0)
		die("open", argv[2]);

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (int i = 0; i < nops; i++) {
		struct op *o = &ops[i];
		int fd;
		struct attr at = {0};
		switch (o->kind) {
		case 'F':
			fd = syscall(SYS_fsopen, o->s, 0);
			if (fd < 0) die("fsopen", o->s);
			for (int k = 0; k < o->nopts; k++) {
				int flag = strcmp(o->kv[2 * k + 1], "-") == 0;
				if (syscall(SYS_fsconfig, fd, flag ? X_FSCONFIG_SET_FLAG : X_FSCONFIG_SET_STRING,
					    o->kv[2 * k], flag ? NULL : o->kv[2 * k + 1], 0))
					die("fsconfig", o->kv[2 * k]);
			}
			if (syscall(SYS_fsconfig, fd, X_FSCONFIG_CMD_CREATE, NULL, NULL, 0))
				die("fsconfig create", o->s);
			sb[o->a] = syscall(SYS_fsmount, fd, 0, 0);
			if (sb[o->a] < 0) die("fsmount", o->s);
			close(fd);
			break;
		case 'T':
			sb[o->a] = syscall(SYS_open_tree, AT_FDCWD, o->s, X_OPEN_TREE_CLONE);
			if (sb[o->a] < 0) die("open_tree", o->s);
			break;
		case 'K':
			if (mkdir_p(sb[o->a], o->s)) die("mkdir", o->s);
			break;
		case 'C':
			if (strcmp(o->s, ".") == 0)
				m[o->a] = syscall(SYS_open_tree, sb[o->b], "", X_OPEN_TREE_CLONE | X_AT_EMPTY_PATH);
			else
				m[o->a] = syscall(SYS_open_tree, sb[o->b], o->s, X_OPEN_TREE_CLONE);
			if (m[o->a] < 0) die("clone", o->s);
			break;
		case 'A':
			at.set = o->x;
			at.clr = o->y;
			if (syscall(SYS_mount_setattr, m[o->a], "", X_AT_EMPTY_PATH, &at, sizeof at))
				die("mount_setattr", NULL);
			break;
		case 'R':
			if (syscall(SYS_move_mount, m[o->a], "", AT_FDCWD, "/", X_MOVE_F_EMPTY))
				die("move_mount", "/");
			if (fchdir(m[o->a]) || syscall(SYS_pivot_root, ".", ".") || umount2(".", MNT_DETACH) || chdir("/"))
				die("pivot_root", NULL);
			break;
		case 'M':
			fd = strcmp(o->s, ".") == 0 ? dup(m[o->b]) : openat(m[o->b], o->s, O_PATH | O_NOFOLLOW);
			if (fd < 0) die("mount point", o->s);
			if (syscall(SYS_move_mount, m[o->a], "", fd, "", X_MOVE_F_EMPTY | X_MOVE_T_EMPTY))
				die("move_mount", o->s);
			close(fd);
			break;
		case 'G':
			if (syscall(SYS_move_mount, m[o->a], "", m[o->b], "",
				    X_MOVE_SET_GROUP | X_MOVE_F_EMPTY | X_MOVE_T_EMPTY))
				die("set group", NULL);
			break;
		case 'O':
			m[o->a] = open(o->s, O_PATH | O_NOFOLLOW);
			if (m[o->a] < 0) die("open", o->s);
			break;
		case 'X':
			close(m[o->a]);
			break;
		case 'Y':
			close(sb[o->a]);
			break;
		case 'P':
			at.prop = o->x;
			if (syscall(SYS_mount_setattr, m[o->a], "", X_AT_EMPTY_PATH, &at, sizeof at))
				die("propagation", NULL);
			break;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("floor_ns %lld\n", (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec));
	fflush(stdout);

	/* Outside the timing: the tree as built, for the caller's comparison. */
	int mi = openat(proc, "self/mountinfo", O_RDONLY);
	if (mi < 0)
		die("open", "mountinfo");
	char buf[1 << 16];
	ssize_t n;
	while ((n = read(mi, buf, sizeof buf)) > 0)
		if (write(out, buf, n) != n)
			die("write", argv[2]);
	return 0;
bad:
	fprintf(stderr, "floor: bad op %d in %s\n", nops, argv[1]);
	return 2;
}
