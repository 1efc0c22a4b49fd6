/*
 * mailspool/metrics.h - the daemon's counters and gauges, rendered in the
 * OpenMetrics text format (the Prometheus exposition format's standard
 * successor; Prometheus scrapes either).
 *
 * The scheduler updates one ms_metrics as it works (results as they are
 * settled, the agents' connection facts as their units end, gauges once
 * per loop); whoever serves them (the program's HTTP listener) renders a
 * consistent view under the same lock.  Counters count since the daemon
 * started (`_created` says when), as OpenMetrics expects.
 *
 * Label values come from a fixed set (route kinds, outcomes), never from
 * outside: no escaping is needed and the number of series is bounded.
 */
#ifndef MAILSPOOL_METRICS_H
#define MAILSPOOL_METRICS_H

#include <pthread.h>
#include <stdint.h>
#include "mailspool/buf.h"
#include "mailspool/error.h"

/* How a destination is reached: the route kinds of mailspool.conf(5). */
enum { MS_METRIC_MX, MS_METRIC_URL, MS_METRIC_RELAYS, MS_METRIC_ROUTES };
/* What became of a recipient in one attempt, as the agent reported it
 * (a failure is bounced or not by NOTIFY: mailspool_reports counts the
 * bounces). */
enum { MS_METRIC_DELIVERED, MS_METRIC_DEFERRED, MS_METRIC_FAILED, MS_METRIC_RESULTS };

/* What an agent tells of a unit's connections and lookups ('C' line). */
typedef struct ms_metrics_conn {
	uint64_t connections, reused;
	uint64_t tls_verified, tls_unverified, plain;
	uint64_t dns_ok, dns_temp, dns_perm, dns_cached;
} ms_metrics_conn;

typedef struct ms_metrics {
	pthread_mutex_t lock;
	int64_t created;                 /* when counting began (Unix time) */
	/* counters */
	uint64_t received;               /* messages new to this daemon */
	uint64_t rcpts[MS_METRIC_ROUTES][MS_METRIC_RESULTS];
	uint64_t reports[3];             /* DSNs queued: bounce, delayed, relayed */
	uint64_t report_failures;        /* DSNs that could not be queued (kept, retried) */
	uint64_t throttled, unreachable; /* destinations that said "slow down", that were down */
	uint64_t envelopes_read;         /* by the scheduler (each an open, a read, a close) */
	uint64_t left_by_hint;           /* another node's, known by the hint alone (spool.h) */
	ms_metrics_conn conn;
	/* gauges */
	uint64_t queue_messages;         /* in the index: queued, all states */
	int64_t oldest_arrival;          /* 0: the queue is empty */
	uint64_t sessions, claimed, destinations, backed_off, agents;
} ms_metrics;

void ms_metrics_init(ms_metrics *m);
void ms_metrics_destroy(ms_metrics *m);

/* The whole exposition, ending in "# EOF", into out (taken under the lock;
 * now is the time ages are measured at). */
ms_status ms_metrics_render(ms_metrics *m, int64_t now, ms_buf *out);

/* The media type to serve it with. */
#define MS_METRICS_CONTENT_TYPE "application/openmetrics-text; version=1.0.0; charset=utf-8"

#endif
