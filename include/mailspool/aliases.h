/*
 * mailspool/aliases.h - local names to addresses: the aliases file and
 * admin_address.
 *
 * A null client has no local mailboxes, yet cron, smartd and
 * unattended-upgrades write to "root".  Without this, root became
 * root@HOSTNAME and went to that name's MX (usually nowhere).  As dma and
 * msmtp do, we read Debian's /etc/aliases format:
 *
 *     # comment
 *     postmaster: root
 *     root:       admin@example.org, ops@example.org
 *     ops-team:   alice, "bob smith"@example.org
 *         , carol@example.org        (a line starting with space continues)
 *
 * A name is matched without regard to case.  A target is an address, a
 * local name (looked up again, up to MS_ALIASES_DEPTH deep; a name that
 * reaches itself stops there) or \name (local, not looked up again).
 * Targets we cannot deliver, having no local delivery - |command, /file,
 * :include:list - are skipped with a warning, as is a duplicate name.
 *
 * A local name that ends without an alias goes to admin_address when one
 * is set (nullmailer's adminaddr), else stays NAME@hostname as before.
 * What counts as local: a bare name, NAME@hostname, NAME@localhost.
 */
#ifndef MAILSPOOL_ALIASES_H
#define MAILSPOOL_ALIASES_H

#include <stddef.h>
#include "mailspool/error.h"
#include "mailspool/hmap.h"

#define MS_ALIASES_DEPTH 8          /* nested names followed */
#define MS_ALIASES_ENTRY_MAX 65536  /* octets of one entry with its continuations */
#define MS_ALIASES_STEPS_MAX 10000  /* targets visited in one expansion (a file
                                     * of lists of lists must not explode) */

typedef struct ms_aliases {
	ms_hmap names;   /* lower-case name -> targets: NUL-separated, "" at the end */
	size_t n;
} ms_aliases;

/* Called for each problem that does not stop the file being used. */
typedef void (*ms_aliases_warn_fn)(void *ctx, const char *msg);

/* Read path.  A line that is no entry fails the load (MS_ERR_USAGE,
 * "path:line: why"); an unreadable file MS_ERR_IO.  warn may be NULL. */
ms_status ms_aliases_load(ms_aliases *a, const char *path, ms_aliases_warn_fn warn, void *ctx,
                          ms_error *err);
void ms_aliases_free(ms_aliases *a);

/* Is addr local for this host: no @, or @hostname, or @localhost? */
int ms_aliases_is_local(const char *addr, const char *hostname);

/* What the local address addr turns into: emit() once per final address
 * (addresses as the file has them; a bare name when neither an alias nor
 * admin_address applies).  a may be NULL (admin_address alone).  emit's
 * non-zero return stops the expansion and is returned; -2 when the
 * expansion visited more than MS_ALIASES_STEPS_MAX targets. */
typedef int (*ms_aliases_emit_fn)(void *ctx, const char *addr);
int ms_aliases_expand(const ms_aliases *a, const char *addr, const char *hostname,
                      const char *admin_address, ms_aliases_emit_fn emit, void *ctx);

#endif
