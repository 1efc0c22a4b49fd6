/*
 * metrics_http.h - the daemon's metrics listener (metrics_http.c).
 */
#ifndef MAILSPOOL_METRICS_HTTP_H
#define MAILSPOOL_METRICS_HTTP_H

#include <stddef.h>
#include "mailspool/metrics.h"

typedef struct metrics_http metrics_http;

/* Serve m on listen ("ADDRESS:PORT", "[V6]:PORT"); NULL with why set. */
metrics_http *metrics_http_start(const char *listen, ms_metrics *m, char *why, size_t whylen);
void metrics_http_stop(metrics_http *h);

#endif
