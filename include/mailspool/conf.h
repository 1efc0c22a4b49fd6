/*
 * mailspool/conf.h - the configuration file, mailspool.conf(5).
 *
 *     # comment
 *     spool_dir = /var/spool/mailspool
 *     retry_tiers = 0 30m 4h 8h 16h 24h 48h
 *
 * One `key = value` per line; blank lines and lines starting with '#' are
 * ignored; surrounding spaces are trimmed.  Durations take s, m, h or d
 * (bare numbers are seconds); sizes take k, M or G (powers of 1024).  An
 * unknown key, a repeated key or a bad value is an error naming the file
 * and line: a typo must not silently fall back to a default.
 *
 * Which file: ms_conf_path() - the -C argument, else $MAILSPOOL_CONFIG,
 * else MS_CONF_DEFAULT_PATH.  A missing default file means all defaults; a
 * missing file that was asked for is an error.
 */
#ifndef MAILSPOOL_CONF_H
#define MAILSPOOL_CONF_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/error.h"

#define MS_CONF_DEFAULT_PATH "/etc/mailspool.conf"
#define MS_CONF_MAX_TIERS 32
#define MS_CONF_PATH_MAX 4096
#define MS_CONF_HOST_MAX 255

typedef struct ms_conf {
	char path[MS_CONF_PATH_MAX];       /* the file read, "" when defaults only */
	char spool_dir[MS_CONF_PATH_MAX];  /* spool_dir (/var/spool/mailspool) */
	char hostname[MS_CONF_HOST_MAX + 1]; /* hostname (this host's name) */
	uint64_t max_message_size;         /* max_message_size (50M); 0 = no limit */
	uint64_t min_free_space;           /* min_free_space (100M): refuse below */
	int64_t retry_tiers[MS_CONF_MAX_TIERS]; /* retry_tiers, seconds after arrival */
	size_t ntiers;                     /* (0 30m 4h 8h 16h 24h 48h) */
	int64_t claim_lease;               /* claim_lease (300 s) */
	int64_t clock_skew;                /* clock_skew (60 s) tolerated between hosts */
} ms_conf;

void ms_conf_defaults(ms_conf *c);
/* The file to read: explicit (may be NULL), $MAILSPOOL_CONFIG, the default.
 * *required says whether its absence is an error. */
const char *ms_conf_path(const char *explicit_path, int *required);
/* Defaults, then the file.  MS_ERR_USAGE names file:line for a bad line;
 * MS_ERR_IO when a required file cannot be read. */
ms_status ms_conf_load(ms_conf *c, const char *path, int required, ms_error *err);
/* "30m", "4h", "2d", "90" (seconds) -> seconds; -1 if malformed. */
int64_t ms_conf_duration(const char *s);
/* "50M", "100k", "1G", "1234" -> bytes; returns 0 and sets *ok = 0 if malformed. */
uint64_t ms_conf_size(const char *s, int *ok);

#endif
