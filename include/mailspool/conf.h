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
 * Relays (smarthosts) are named and described by dotted keys:
 *
 *     relay.main.url = smtp://me%40example.org@smtp.example.org:587
 *     relay.main.password_file = /etc/mailspool/main.pw
 *     relay.backup.url = smtps://backup.example.net
 *     relay.backup.password_eval = pass show mail/backup
 *     relays = main backup                    # the default, in failover order
 *     sender_relays.example.net = backup      # by sender domain
 *     sender_relays.boss@example.org = main   # or by whole address
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

/* Compiled in (make SYSCONFDIR=...): the set-id helper reads only this. */
#ifndef MS_SYSCONFDIR
#define MS_SYSCONFDIR "/etc"
#endif
#define MS_CONF_DEFAULT_PATH MS_SYSCONFDIR "/mailspool.conf"
#define MS_CONF_USER_MAX 32
#define MS_CONF_MAX_TIERS 32
#define MS_CONF_PATH_MAX 4096
#define MS_CONF_HOST_MAX 255
#define MS_CONF_MAX_RELAYS 16
#define MS_CONF_MAX_SENDER_RELAYS 64
#define MS_CONF_VALUE_MAX 512
#define MS_CONF_MAX_ROUTES 128
#define MS_CONF_MAX_SHAPES 64
#define MS_CONF_MAX_DKIM 64     /* signing domains */
#define MS_CONF_DKIM_SIGS 4     /* signatures per domain (e.g. RSA and Ed25519) */
#define MS_CONF_UNCOMMITTED_DEFAULT 48

/* Traffic shaping for destinations matching a pattern (destination.P.*):
 * P is a domain ("example.com"), every subdomain of one (".example.com")
 * or an MX host pattern ("*.mail.protection.outlook.com"); 0 = the global
 * setting. */
typedef struct ms_conf_shape {
	char pattern[256];
	size_t concurrency;      /* destination.P.concurrency */
	size_t conn_messages;    /* destination.P.connection_messages */
	size_t rate;             /* destination.P.rate: messages per minute (0: no limit) */
	char bind_address[100];  /* destination.P.bind_address ("": the global one) */
	int tls;                 /* destination.P.tls: an ms_tls_policy, -1: the global one */
} ms_conf_shape;

/* One relay: how to reach it, how to secure and log in to it. */
/* DKIM signing for mail whose From: is in one domain (dkim.DOMAIN.*;
 * RFC 6376, RFC 8463; mailspool/dkim.h signs).  One signature per
 * selector, each with its own key file and algorithm. */
typedef enum ms_dkim_alg {
	MS_DKIM_ALG_RSA_SHA256 = 0, /* the default, as every signer's */
	MS_DKIM_ALG_ED25519_SHA256
} ms_dkim_alg;

typedef struct ms_conf_dkim_sig {
	char selector[64];                /* .selector (one word of the list) */
	char key_file[MS_CONF_VALUE_MAX]; /* .key_file (the same place in its list) */
	ms_dkim_alg alg;                  /* .algorithm (the same place; default rsa-sha256) */
} ms_conf_dkim_sig;

typedef struct ms_conf_dkim {
	char domain[MS_CONF_HOST_MAX + 1];   /* d=, lower case */
	ms_conf_dkim_sig sigs[MS_CONF_DKIM_SIGS];
	size_t nsigs;
	char headers[MS_CONF_VALUE_MAX];     /* .headers: "From:To:..." ("": mailspool's list) */
	int relaxed_header, relaxed_body;    /* .canonicalization (relaxed/relaxed) */
	/* The raw lists, split when the file is complete. */
	char selector_list[MS_CONF_VALUE_MAX], key_list[MS_CONF_VALUE_MAX * 2], alg_list[128];
} ms_conf_dkim;

typedef struct ms_conf_relay {
	char name[64];
	char url[MS_CONF_VALUE_MAX];            /* relay.N.url (required) */
	int tls;                                /* relay.N.tls; -1: verify (relays' default) */
	char tls_ca_file[MS_CONF_VALUE_MAX];    /* relay.N.tls_ca_file */
	char tls_name[256];                     /* relay.N.tls_name */
	char password_file[MS_CONF_VALUE_MAX];  /* relay.N.password_file */
	char password_eval[MS_CONF_VALUE_MAX];  /* relay.N.password_eval (a command) */
	char oauth_token_eval[MS_CONF_VALUE_MAX]; /* relay.N.oauth_token_eval (XOAUTH2) */
	char auth_mechs[128];                   /* relay.N.auth_mechs */
	int auth_plaintext;                     /* relay.N.auth_plaintext = yes */
} ms_conf_relay;

/* sender_relays.KEY = NAME...: KEY is an address or a domain. */
typedef struct ms_conf_sender_relays {
	char key[256];
	int relays[MS_CONF_MAX_RELAYS]; /* indexes into ms_conf.relays */
	size_t n;
} ms_conf_sender_relays;

/* Where mail goes (route.DOMAIN and default_route): MX lookup, one URL, or
 * relays with failover ("relays" alone: those chosen by the sender, as for
 * `send --via relay`). */
typedef enum ms_conf_route_kind {
	MS_ROUTE_MX = 0,
	MS_ROUTE_URL,
	MS_ROUTE_RELAYS,       /* the named relays, in order */
	MS_ROUTE_SENDER_RELAYS /* ms_conf_relays_for(sender) */
} ms_conf_route_kind;

typedef struct ms_conf_route {
	char domain[256];      /* "example.org", or ".example.org" for its subdomains */
	ms_conf_route_kind kind;
	char url[MS_CONF_VALUE_MAX];
	int relays[MS_CONF_MAX_RELAYS];
	size_t nrelays;
} ms_conf_route;

typedef struct ms_conf {
	char path[MS_CONF_PATH_MAX];       /* the file read, "" when defaults only */
	char spool_dir[MS_CONF_PATH_MAX];  /* spool_dir (/var/spool/mailspool) */
	char hostname[MS_CONF_HOST_MAX + 1]; /* hostname (this host's name) */
	uint64_t max_message_size;         /* max_message_size (50M); 0 = no limit */
	uint64_t min_free_space;           /* min_free_space (100M): refuse below */
	int64_t retry_tiers[MS_CONF_MAX_TIERS]; /* retry_tiers: the wait before each attempt */
	size_t ntiers;                     /* (0 30m 4h 8h 16h 24h 48h) */
	int64_t claim_lease;               /* claim_lease (300 s) */
	int64_t clock_skew;                /* clock_skew (60 s) tolerated between hosts */
	ms_conf_relay relays[MS_CONF_MAX_RELAYS]; /* relay.NAME.* */
	size_t nrelays;
	int default_relays[MS_CONF_MAX_RELAYS];  /* relays = NAME... */
	size_t ndefault_relays;
	ms_conf_sender_relays sender_relays[MS_CONF_MAX_SENDER_RELAYS];
	size_t nsender_relays;
	/* Delivery: the daemon and `send --mode now|background`. */
	ms_conf_route default_route;       /* default_route (mx) */
	ms_conf_route routes[MS_CONF_MAX_ROUTES]; /* route.DOMAIN = mx | URL | NAME... */
	size_t nroutes;
	char dns_servers[MS_CONF_VALUE_MAX]; /* dns_servers ("": /etc/resolv.conf) */
	int64_t dns_timeout;               /* dns_timeout (30 s) for one domain's lookup */
	char mx_port[6];                   /* mx_port (25) */
	unsigned mta_sts_port;             /* mta_sts_port (443): the policy's HTTPS port */
	size_t mx_address_limit;           /* mx_address_limit (5) addresses tried */
	size_t max_deliveries;             /* max_deliveries (1000) sessions at once, all agents */
	size_t claim_window;               /* claim_window (4000): messages claimed at once */
	size_t delivery_agents;            /* delivery_agents (0: one per core, at most 16) */
	int64_t connection_reuse_time;     /* connection_reuse_time (5 s; 0: never reuse) */
	size_t agent_uncommitted;          /* agent_uncommitted (48): messages per agent
	                                    * between hand-off and committed result */
	int64_t destination_recovery;      /* destination_recovery (30 s): one step back up
	                                    * after a throttle, per this long */
	size_t destination_rate;           /* destination_rate (0: none) messages per minute */
	ms_conf_shape shapes[MS_CONF_MAX_SHAPES];
	size_t nshapes;
	ms_conf_dkim dkim[MS_CONF_MAX_DKIM]; /* dkim.DOMAIN.* */
	size_t ndkim;
	size_t destination_concurrency;    /* destination_concurrency (10) per destination */
	size_t connection_messages;        /* connection_messages (100): messages per
	                                    * connection; a group this large earns another */
	int64_t destination_backoff;       /* destination_backoff (5m) after it failed */
	int64_t queue_scan_interval;       /* queue_scan_interval (60 s) */
	int64_t connect_timeout;           /* connect_timeout (30 s) */
	unsigned inet_protocols;           /* inet_protocols (all): MS_NET_V4 | MS_NET_V6 */
	int address_preference;            /* address_preference (any: 0), ipv4: 4, ipv6: 6 */
	char bind_address[100];            /* bind_address ("": the kernel chooses) */
	int tls_security_level;            /* tls_security_level (dane): MX delivery's policy */
	char tls_ca_file[MS_CONF_PATH_MAX]; /* tls_ca_file ("": the system store) for verify */
	int64_t command_timeout;           /* command_timeout (0: RFC 5321 4.5.3.2 per command) */
	/* SMTP shapes (mailspool.conf(5); PROTOCOL-RULES P1-P6): */
	int smtp_chunking;                 /* smtp_chunking (yes): BDAT when offered */
	int smtp_cross_message;            /* smtp_cross_message (yes) */
	int smtp_rset_first;               /* smtp_rset_first (yes) */
	size_t smtp_bdat_messages;         /* smtp_bdat_messages (128) in flight */
	uint64_t smtp_bdat_bytes;          /* smtp_bdat_bytes (8M) in flight */
	size_t smtp_session_messages;      /* smtp_session_messages (1000) per connection */
	size_t smtp_session_failures;      /* smtp_session_failures (8) per connection */
	char log_file[MS_CONF_PATH_MAX];   /* log_file (syslog) */
	int log_json;                      /* log_format = json (text): one JSON object a line */
	char metrics_listen[64];           /* metrics_listen ("": off) ADDRESS:PORT, OpenMetrics */
	char wake_address[46];             /* wake_address ("": FIFOs only) this host's address
	                                    * for wake-ups from other hosts (UDP) */
	/* Local names (mailspool/aliases.h). */
	char aliases[MS_CONF_PATH_MAX];    /* aliases ("": none), Debian /etc/aliases format */
	char admin_address[256];           /* admin_address ("": none) for local names left */
	int64_t delay_warning;             /* delay_warning (0: off) - one "delayed" report */
	/* Privilege separation (SECURITY.md). */
	char mail_owner[MS_CONF_USER_MAX + 1]; /* mail_owner (mailspool): owns the queue */
	char authorized_mailq_users[MS_CONF_VALUE_MAX]; /* (anyone) | user names */
} ms_conf;

void ms_conf_defaults(ms_conf *c);
/* The file to read: explicit (may be NULL), $MAILSPOOL_CONFIG, the default.
 * *required says whether its absence is an error. */
const char *ms_conf_path(const char *explicit_path, int *required);
/* Defaults, then the file.  MS_ERR_USAGE names file:line for a bad line;
 * MS_ERR_IO when a required file cannot be read. */
ms_status ms_conf_load(ms_conf *c, const char *path, int required, ms_error *err);
/* The relays for mail from `sender`, in failover order: those of its
 * address in sender_relays, else of its domain, else `relays`.  Returns
 * how many were written to out (0: none configured). */
size_t ms_conf_relays_for(const ms_conf *c, const char *sender, const ms_conf_relay **out,
                          size_t max);

/* The route for mail to `domain`: route.DOMAIN, then
 * route..PARENT for each parent domain, then default_route. */
const ms_conf_route *ms_conf_route_for(const ms_conf *c, const char *domain);

/* May the user `name` list the queue (authorized_mailq_users)?  root and
 * mail_owner always may. */
int ms_conf_mailq_allowed(const ms_conf *c, const char *name);

/* bind_address's value: one IPv4 and/or one IPv6 address (the IPv6 one
 * may be in brackets), separated by spaces or a comma, into bind4/bind6
 * ("" for a family not given).  -1 if a word is no numeric address or a
 * family comes twice.  (Here and not in the network code: the light
 * sendmail reads the configuration without linking that.) */
int ms_conf_parse_bind(const char *s, char bind4[46], char bind6[46]);

/* The DKIM entry for mail From: `domain`: dkim.DOMAIN, else that of its
 * nearest parent domain (a.b.example.org, then b.example.org, ...); NULL
 * when none signs for it. */
const ms_conf_dkim *ms_conf_dkim_for(const ms_conf *c, const char *domain);

/* Does name fall under a destination pattern: "example.com" itself,
 * ".example.com" (its subdomains) or "*.example.com" (the same)? */
int ms_conf_pattern_match(const char *pat, const char *name);

/* The TLS policy (an ms_tls_policy) for mail to domain through the MX
 * host mxhost: destination.P.tls of the first pattern matching either,
 * else tls_security_level. */
int ms_conf_tls_for(const ms_conf *c, const char *domain, const char *mxhost);

/* "30m", "4h", "2d", "90" (seconds) -> seconds; -1 if malformed. */
int64_t ms_conf_duration(const char *s);
/* "50M", "100k", "1G", "1234" -> bytes; returns 0 and sets *ok = 0 if malformed. */
uint64_t ms_conf_size(const char *s, int *ok);

#endif
