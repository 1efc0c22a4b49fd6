/*
 * mailspool/cluster.h - the daemons sharing a spool, and who delivers what.
 *
 * Every daemon holds its node's lock file (lock.NODE in spool_dir) and
 * touches it every third of a lease (the heartbeat; the lease keeper does
 * it).  A peer is alive while its lock is held and its heartbeat has
 * changed within claim_lease + clock_skew by OUR monotonic clock - no
 * clock of another host is ever compared with ours.  Each destination is
 * delivered by one live node, chosen by rendezvous hashing of the node
 * names with the destination's key: every node computes the same owner
 * from the same live set, a node joining or leaving moves only its own
 * share, and so one node's limits, back-off and probes are the cluster's
 * (INTERNALS.md, "Several hosts").  Claims still decide who may act on a
 * message; ownership only decides who tries.
 */
#ifndef MAILSPOOL_CLUSTER_H
#define MAILSPOOL_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include "mailspool/conf.h"
#include "mailspool/spool.h"

typedef struct ms_peers ms_peers;

ms_peers *ms_peers_new(const char *self);
void ms_peers_free(ms_peers *p);
/* Look at the nodes again (a listing of spool_dir, a stat per node, a
 * lock test per node now and then).  1 when the live set changed. */
int ms_peers_refresh(ms_peers *p, ms_spool *sp, const ms_conf *c);
/* Live nodes, this one included. */
size_t ms_peers_live(const ms_peers *p);
/* The live node that delivers to `key`. */
const char *ms_peers_owner(const ms_peers *p, const char *key);
int ms_peers_owns(const ms_peers *p, const char *key);

#endif
