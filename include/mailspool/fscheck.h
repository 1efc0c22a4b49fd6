/*
 * mailspool/fscheck.h - is the spool's file system one we can share safely?
 *
 * Several daemons on several hosts may share one spool only on a file
 * system whose link() is atomic, whose locks are seen by every host and
 * whose clients do not answer from caches: a stale cached envelope, a
 * cached "no such file" or a cached attribute made daemons deliver twice
 * and quarantine delivered messages (INTERNALS.md, "Several hosts").  The
 * daemon asks this at start and refuses a setup known to be unsafe:
 *   - a local file system: fine (one host);
 *   - GlusterFS (FUSE): fine when the volume is a replica (or one brick),
 *     not distributed over several subvolumes (DHT: link() not atomic),
 *     with every client cache off (md-cache, quick-read, open-behind,
 *     io-cache, read-ahead, readdir-ahead, nl-cache, write-behind) and
 *     the mount's attribute, entry and negative timeouts 0 - read from the
 *     client's own .meta directory;
 *   - NFS: fine when mounted with actimeo=0 (or noac) and lookupcache=none,
 *     with locks (no nolock, no local_lock) - from /proc/self/mountinfo;
 *     not proven here (no NFS client in the test machines' kernel);
 *   - any other FUSE or network file system (CIFS, sshfs, ...): refused.
 */
#ifndef MAILSPOOL_FSCHECK_H
#define MAILSPOOL_FSCHECK_H

#include <stddef.h>
#include "mailspool/error.h"

/* MS_OK with *kind naming the setup ("local", "glusterfs replica",
 * "nfs"); MS_ERR_TEMP saying what is unsafe and how to fix it. */
ms_status ms_fscheck(const char *dir, char *kind, size_t kind_len, ms_error *err);

#endif
