/*
 * mailspool/wakenet.h - wake-ups between hosts sharing a spool.
 *
 * A FIFO is a pipe of one kernel: a daemon on another host cannot be
 * woken through one (opening it gives ENXIO).  So a daemon with
 * wake_address set also listens on a UDP port of that address and says
 * where in wake/NODE.PID.udp ("ADDRESS PORT"); every wake-up it reads from
 * its FIFO (a local submission, a bounce, a flush) it relays, as one or a
 * few datagrams, to the endpoints whose FIFO is not on this kernel.
 * Submitters and the set-id helper only ever write FIFOs: nothing that
 * runs with a caller's input touches the network.
 *
 * Each datagram is "MAC MESSAGES": HMAC-SHA256, truncated to 128 bits (32
 * hex digits), under wake/key - 32 random octets the first such daemon
 * makes, readable by the spool's owner alone - over the messages, which
 * are the FIFO's ("n<ID>\n", "n\n", "c", "f").  A datagram with a wrong
 * MAC is dropped unread; a replayed one only makes a daemon read the spool
 * (every wake-up is a hint; the spool decides).  Datagrams are lost now
 * and then: the queue scan (queue_scan_interval) is the net under them.
 */
#ifndef MAILSPOOL_WAKENET_H
#define MAILSPOOL_WAKENET_H

#include <stddef.h>
#include "mailspool/error.h"
#include "mailspool/spool.h"

typedef struct ms_wakenet ms_wakenet;

/* Listen on addr (a port the kernel picks) and publish the endpoint.
 * addr "": *out is NULL, MS_OK (FIFOs only). */
ms_status ms_wakenet_open(ms_spool *sp, const char *addr, const char *node, ms_wakenet **out,
                          ms_error *err);
int ms_wakenet_fd(const ms_wakenet *w);
/* The messages of the datagrams waiting (MAC checked), appended to out;
 * the octets appended. */
size_t ms_wakenet_recv(ms_wakenet *w, char *out, size_t cap);
/* Send messages (n octets, whole messages) to every other host's daemon.
 * The endpoints are listed again at most every two seconds. */
void ms_wakenet_relay(ms_wakenet *w, ms_spool *sp, const char *msg, size_t n);
/* Stop listening; the endpoint file is removed with the FIFO
 * (ms_spool_wake_unlisten). */
void ms_wakenet_close(ms_wakenet *w);

#endif
