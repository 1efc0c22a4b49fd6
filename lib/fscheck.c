/*
 * fscheck.c - the spool's file system, checked (see mailspool/fscheck.h).
 *
 * Everything read here is the kernel's (statfs, /proc/self/mountinfo) or
 * the GlusterFS client's own view of itself (MOUNT/.meta: its command line
 * and its active graph of translators), never a file anyone else writes.
 */
#include "mailspool/fscheck.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/vfs.h>
#include <unistd.h>

#define FUSE_MAGIC 0x65735546
#define NFS_MAGIC 0x6969
#define SMB_MAGIC 0x517B
#define CIFS_MAGIC 0xFF534D42
#define SMB2_MAGIC 0xFE534D42

/* GlusterFS translators that answer from a client-side cache. */
static const char *const caches[] = {
	"performance/md-cache",    "performance/quick-read", "performance/open-behind",
	"performance/io-cache",    "performance/read-ahead", "performance/readdir-ahead",
	"performance/nl-cache",    "performance/write-behind",
};

/* The mount under which `path` lies: the longest mount point that is a
 * prefix of it.  Its point, type and options (per-mount and super). */
static int find_mount(const char *path, char *point, size_t pn, char *type, size_t tn,
                      char *opts, size_t on)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return -1;
	char line[4096];
	size_t best = 0;
	int found = -1;
	while (fgets(line, sizeof line, f)) {
		/* ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - TYPE SOURCE SUPER */
		char mp[PATH_MAX], mo[1024], ty[128], src[1024], so[2048];
		if (sscanf(line, "%*s %*s %*s %*s %4095s %1023s", mp, mo) != 2)
			continue;
		char *dash = strstr(line, " - ");
		if (!dash || sscanf(dash + 3, "%127s %1023s %2047s", ty, src, so) != 3)
			continue;
		size_t n = strlen(mp);
		int under = !strcmp(mp, "/") ||
		            (!strncmp(path, mp, n) && (path[n] == '/' || path[n] == '\0'));
		if (!under || n < best)
			continue;
		best = n;
		snprintf(point, pn, "%s", mp);
		snprintf(type, tn, "%s", ty);
		snprintf(opts, on, "%s,%s", mo, so);
		found = 0;
	}
	fclose(f);
	return found;
}

static int has_opt(const char *opts, const char *want)
{
	size_t n = strlen(want);
	for (const char *p = opts; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
		if (!strncmp(p, want, n) && (p[n] == ',' || p[n] == '\0' || want[n - 1] == '='))
			return 1;
	return 0;
}

static ssize_t slurp(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -1;
	ssize_t r = read(fd, buf, cap - 1);
	close(fd);
	if (r >= 0)
		buf[r] = '\0';
	return r;
}

/* "--NAME=0" given (or, for the negative timeout, not given: its default
 * is 0). */
static int timeout_zero(const char *cmdline, const char *name, int absent_ok)
{
	char key[64];
	snprintf(key, sizeof key, "--%s=", name);
	const char *p = strstr(cmdline, key);
	if (!p)
		return absent_ok;
	p += strlen(key);
	return p[0] == '0' && (p[1] == ' ' || p[1] == '"' || p[1] == '\0' || p[1] == '\n');
}

static ms_status check_gluster(const char *point, ms_error *err)
{
	char path[PATH_MAX + 64], buf[4096];
	snprintf(path, sizeof path, "%s/.meta/cmdline", point);
	if (slurp(path, buf, sizeof buf) < 0)
		return ms_error_set(err, MS_ERR_TEMP,
		                    "cannot read %s (GlusterFS client's own description): %s", path,
		                    strerror(errno));
	if (!timeout_zero(buf, "attribute-timeout", 0) || !timeout_zero(buf, "entry-timeout", 0) ||
	    !timeout_zero(buf, "negative-timeout", 1))
		return ms_error_set(err, MS_ERR_TEMP,
		                    "GlusterFS mount %s caches attributes or names: mount it with "
		                    "attribute-timeout=0,entry-timeout=0,negative-timeout=0",
		                    point);
	snprintf(path, sizeof path, "%s/.meta/graphs/active", point);
	DIR *d = opendir(path);
	if (!d)
		return ms_error_set(err, MS_ERR_TEMP, "cannot read %s: %s", path, strerror(errno));
	struct dirent *de;
	ms_status st = MS_OK;
	int replica = 0;
	while (st == MS_OK && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char tp[PATH_MAX + 400], type[128];
		snprintf(tp, sizeof tp, "%s/%s/type", path, de->d_name);
		if (slurp(tp, type, sizeof type) <= 0)
			continue;
		type[strcspn(type, "\n")] = '\0';
		for (size_t i = 0; i < sizeof caches / sizeof caches[0]; i++)
			if (!strcmp(type, caches[i]))
				st = ms_error_set(err, MS_ERR_TEMP,
				                  "GlusterFS volume at %s has the client cache %s on: set "
				                  "performance.%s off (and every cache INTERNALS.md names)",
				                  point, type,
				                  !strcmp(type, "performance/md-cache") ? "stat-prefetch"
				                                                         : type + 12);
		if (!strcmp(type, "cluster/replicate"))
			replica = 1;
		if (st == MS_OK && !strcmp(type, "cluster/distribute")) {
			snprintf(tp, sizeof tp, "%s/%s/subvolumes", path, de->d_name);
			DIR *sd = opendir(tp);
			size_t n = 0;
			struct dirent *se;
			while (sd && (se = readdir(sd)))
				n += se->d_name[0] != '.';
			if (sd)
				closedir(sd);
			if (n > 1)
				st = ms_error_set(err, MS_ERR_TEMP,
				                  "GlusterFS volume at %s is distributed over %zu subvolumes: "
				                  "link() is not atomic there (two daemons can both win a "
				                  "claim); use a replica volume",
				                  point, n);
		}
	}
	closedir(d);
	(void)replica; /* one brick is as safe as a replica, only less durable */
	return st;
}

ms_status ms_fscheck(const char *dir, char *kind, size_t kind_len, ms_error *err)
{
	struct statfs sf;
	if (statfs(dir, &sf) < 0)
		return ms_error_set(err, MS_ERR_TEMP, "cannot check the file system of %s: %s", dir,
		                    strerror(errno));
	unsigned long t = (unsigned long)sf.f_type;
	if (t == SMB_MAGIC || t == CIFS_MAGIC || t == SMB2_MAGIC)
		return ms_error_set(err, MS_ERR_TEMP,
		                    "spool %s is on SMB/CIFS, which mailspool does not support (no "
		                    "reliable hard links or locks): use a local file system, a "
		                    "GlusterFS replica or NFS (INTERNALS.md)",
		                    dir);
	if (t != FUSE_MAGIC && t != NFS_MAGIC) {
		snprintf(kind, kind_len, "local");
		return MS_OK;
	}
	char real[PATH_MAX], point[PATH_MAX], type[128], opts[3200];
	if (!realpath(dir, real) ||
	    find_mount(real, point, sizeof point, type, sizeof type, opts, sizeof opts) < 0)
		return ms_error_set(err, MS_ERR_TEMP, "cannot find the mount of %s", dir);
	if (t == NFS_MAGIC) {
		if (!(has_opt(opts, "noac") || has_opt(opts, "actimeo=0")) ||
		    !has_opt(opts, "lookupcache=none"))
			return ms_error_set(err, MS_ERR_TEMP,
			                    "NFS mount %s caches attributes or names: mount it with "
			                    "actimeo=0,lookupcache=none",
			                    point);
		if (has_opt(opts, "nolock") || has_opt(opts, "local_lock=flock") ||
		    has_opt(opts, "local_lock=all"))
			return ms_error_set(err, MS_ERR_TEMP,
			                    "NFS mount %s has no shared locks (nolock/local_lock): other "
			                    "hosts' daemons could not be told alive from dead",
			                    point);
		snprintf(kind, kind_len, "nfs");
		return MS_OK;
	}
	if (strcmp(type, "fuse.glusterfs"))
		return ms_error_set(err, MS_ERR_TEMP,
		                    "spool %s is on the FUSE file system %s, which mailspool does not "
		                    "support: use a local file system, a GlusterFS replica or NFS",
		                    dir, type);
	ms_status st = check_gluster(point, err);
	if (st == MS_OK)
		snprintf(kind, kind_len, "glusterfs");
	return st;
}
