/*
 * priv.c - who the caller is, and becoming the queue's owner.
 *
 * The queue belongs to mail_owner (SECURITY.md).  Root and the owner
 * administer it; root does so only after giving up root for the owner's
 * identity, for good, so that nothing it writes in the spool belongs to
 * root and nothing it parses runs as root.  Anyone else reaches the queue
 * only through the set-id helper (mailspool-drop).
 */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "cli.h"

int cli_owner(const ms_conf *c, uid_t *uid, gid_t *gid)
{
	errno = 0;
	struct passwd *pw = getpwnam(c->mail_owner);
	if (!pw) {
		fprintf(stderr, "%s: there is no user %s (mail_owner): run 'mailspool setup' as root\n",
		        progname, c->mail_owner);
		return EX_CONFIG_;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	return 0;
}

int cli_caller_is_admin(const ms_conf *c)
{
	if (getuid() == 0)
		return 1;
	struct passwd *pw = getpwnam(c->mail_owner);
	return pw && getuid() == pw->pw_uid;
}

int cli_drop_to(uid_t uid, gid_t gid)
{
	if (getuid() == uid && geteuid() == uid)
		return 0;
	/* From root: supplementary groups go too.  A set-id program cannot
	 * drop the caller's supplementary groups; it is installed set-group-ID
	 * as well, so every other id can become the owner's. */
	if ((geteuid() == 0 && setgroups(1, &gid) < 0) || setresgid(gid, gid, gid) < 0 ||
	    setresuid(uid, uid, uid) < 0) {
		fprintf(stderr, "%s: cannot become uid %u: %s\n", progname, (unsigned)uid,
		        strerror(errno));
		return EX_SOFTWARE_;
	}
	/* Verified, not assumed: every id is the owner's and root cannot be
	 * had back (setuid from root to another user also clears every
	 * capability). */
	uid_t r, e, s;
	gid_t rg, eg, sg;
	if (getresuid(&r, &e, &s) < 0 || r != uid || e != uid || s != uid ||
	    getresgid(&rg, &eg, &sg) < 0 || rg != gid || eg != gid || sg != gid ||
	    (uid != 0 && setuid(0) == 0)) {
		fprintf(stderr, "%s: giving up privileges did not work\n", progname);
		return EX_SOFTWARE_;
	}
	return 0;
}

int cli_become_owner(const ms_conf *c, const char *what)
{
	uid_t uid;
	gid_t gid;
	int r = cli_owner(c, &uid, &gid);
	if (r)
		return r;
	if (getuid() == uid && geteuid() == uid)
		return 0;
	if (geteuid() != 0 || getuid() != 0) {
		fprintf(stderr, "%s: only root and the queue's owner (%s) may %s\n", progname,
		        c->mail_owner, what);
		return EX_NOPERM_;
	}
	return cli_drop_to(uid, gid);
}
