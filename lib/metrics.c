/*
 * metrics.c - rendering the daemon's metrics (mailspool/metrics.h) in the
 * OpenMetrics 1.0 text format: per family "# TYPE", "# HELP", then its
 * samples; counters end in _total and carry _created; "# EOF" last.
 */
#include "mailspool/metrics.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

void ms_metrics_init(ms_metrics *m)
{
	memset(m, 0, sizeof *m);
	pthread_mutex_init(&m->lock, NULL);
	m->created = (int64_t)time(NULL);
}

void ms_metrics_destroy(ms_metrics *m)
{
	pthread_mutex_destroy(&m->lock);
}

static const char *const route_names[MS_METRIC_ROUTES] = { "mx", "url", "relays" };
static const char *const result_names[MS_METRIC_RESULTS] = { "delivered", "deferred", "failed" };

static void family(ms_buf *b, const char *name, const char *type, const char *help)
{
	ms_buf_printf(b, "# TYPE %s %s\n# HELP %s %s\n", name, type, name, help);
}

static void counter(ms_buf *b, const char *name, const char *labels, uint64_t v, int64_t created)
{
	ms_buf_printf(b, "%s_total%s %llu\n%s_created%s %lld\n", name, labels, (unsigned long long)v,
	              name, labels, (long long)created);
}

static void gauge(ms_buf *b, const char *name, const char *help, uint64_t v)
{
	family(b, name, "gauge", help);
	ms_buf_printf(b, "%s %llu\n", name, (unsigned long long)v);
}

ms_status ms_metrics_render(ms_metrics *m, int64_t now, ms_buf *out)
{
	pthread_mutex_lock(&m->lock);
	const int64_t cr = m->created;
	char labels[96];

	family(out, "mailspool_messages_received", "counter",
	       "Messages that arrived in the queue while this daemon ran.");
	counter(out, "mailspool_messages_received", "", m->received, cr);

	family(out, "mailspool_recipients", "counter",
	       "Recipient outcomes of delivery attempts, by route kind.");
	for (int r = 0; r < MS_METRIC_ROUTES; r++)
		for (int k = 0; k < MS_METRIC_RESULTS; k++) {
			snprintf(labels, sizeof labels, "{route=\"%s\",result=\"%s\"}", route_names[r],
			         result_names[k]);
			counter(out, "mailspool_recipients", labels, m->rcpts[r][k], cr);
		}

	static const char *const kinds[3] = { "bounce", "delayed", "relayed" };
	family(out, "mailspool_reports", "counter",
	       "Delivery status notifications queued to senders, by kind.");
	for (int k = 0; k < 3; k++) {
		snprintf(labels, sizeof labels, "{kind=\"%s\"}", kinds[k]);
		counter(out, "mailspool_reports", labels, m->reports[k], cr);
	}
	family(out, "mailspool_report_failures", "counter",
	       "Notifications that could not be queued yet (kept and tried again).");
	counter(out, "mailspool_report_failures", "", m->report_failures, cr);

	family(out, "mailspool_destination_events", "counter",
	       "Destinations that asked us to slow down, or that nobody answered for.");
	counter(out, "mailspool_destination_events", "{event=\"throttled\"}", m->throttled, cr);
	counter(out, "mailspool_destination_events", "{event=\"unreachable\"}", m->unreachable, cr);

	family(out, "mailspool_envelope_looks", "counter",
	       "Queued messages looked at: envelopes read, and messages left to another "
	       "node sharing the spool by their destination hint alone.");
	counter(out, "mailspool_envelope_looks", "{how=\"read\"}", m->envelopes_read, cr);
	counter(out, "mailspool_envelope_looks", "{how=\"hint\"}", m->left_by_hint, cr);

	family(out, "mailspool_connections", "counter",
	       "Connections opened to servers, by how they were secured.");
	counter(out, "mailspool_connections", "{tls=\"verified\"}", m->conn.tls_verified, cr);
	counter(out, "mailspool_connections", "{tls=\"unverified\"}", m->conn.tls_unverified, cr);
	counter(out, "mailspool_connections", "{tls=\"none\"}", m->conn.plain, cr);
	family(out, "mailspool_sessions_reused", "counter",
	       "Deliveries that took a parked session instead of connecting.");
	counter(out, "mailspool_sessions_reused", "", m->conn.reused, cr);

	family(out, "mailspool_dns_lookups", "counter",
	       "MX lookups of the delivery agents, by outcome (cached: answered from the cache).");
	counter(out, "mailspool_dns_lookups", "{result=\"ok\"}", m->conn.dns_ok, cr);
	counter(out, "mailspool_dns_lookups", "{result=\"temporary_failure\"}", m->conn.dns_temp, cr);
	counter(out, "mailspool_dns_lookups", "{result=\"permanent_failure\"}", m->conn.dns_perm, cr);
	counter(out, "mailspool_dns_lookups", "{result=\"cached\"}", m->conn.dns_cached, cr);

	gauge(out, "mailspool_queue_messages", "Messages in the queue (every state).",
	      m->queue_messages);
	family(out, "mailspool_queue_oldest_age_seconds", "gauge",
	       "Age of the oldest message in the queue (0 when it is empty).");
	ms_buf_printf(out, "mailspool_queue_oldest_age_seconds %lld\n",
	              (long long)(m->oldest_arrival && now > m->oldest_arrival
	                              ? now - m->oldest_arrival : 0));
	gauge(out, "mailspool_sessions", "Delivery sessions running now.", m->sessions);
	gauge(out, "mailspool_claimed_messages", "Messages this daemon holds claims on.", m->claimed);
	gauge(out, "mailspool_destinations", "Destinations the scheduler keeps state for.",
	      m->destinations);
	gauge(out, "mailspool_destinations_backed_off",
	      "Destinations left alone for now: nobody answered for them.", m->backed_off);
	gauge(out, "mailspool_delivery_agents", "Delivery agent processes running.", m->agents);
	family(out, "mailspool_daemon_start_time_seconds", "gauge", "When this daemon started.");
	ms_buf_printf(out, "mailspool_daemon_start_time_seconds %lld\n", (long long)cr);
	ms_status st = ms_buf_appendstr(out, "# EOF\n");
	pthread_mutex_unlock(&m->lock);
	return st;
}
