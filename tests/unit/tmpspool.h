/*
 * tmpspool.h - a throwaway spool for unit tests: a new directory under
 * /tmp, the defaults with min_free_space 0, removed afterwards.
 */
#ifndef TMPSPOOL_H
#define TMPSPOOL_H

#include <stdio.h>
#include <stdlib.h>

#include "mailspool/spool.h"

static char root[64]; /* the spool is root/spool */

/* Fill c with the defaults for a spool under a new directory, let `adjust`
 * (may be NULL) change c, then open (and create) the spool. */
static void tmp_spool(ms_conf *c, ms_spool **sp, void (*adjust)(ms_conf *c))
{
	snprintf(root, sizeof root, "/tmp/mailspool-unit.XXXXXX");
	assert_non_null(mkdtemp(root));
	ms_conf_defaults(c);
	snprintf(c->spool_dir, sizeof c->spool_dir, "%s/spool", root);
	c->min_free_space = 0;
	if (adjust)
		adjust(c);
	ms_error err;
	assert_int_equal(ms_spool_open(c, 1, sp, &err), MS_OK);
}

static void tmp_spool_remove(ms_spool *sp)
{
	ms_spool_close(sp);
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf %s", root);
	assert_int_equal(system(cmd), 0);
}

#endif
