/*
 * mailspool/message.h - one message to send: envelope, data source, outcome.
 *
 * The data is a list of segments - bytes held in memory, or a range of a
 * file descriptor read with pread() - so a huge file is streamed in constant
 * memory and a rewritten header block (Bcc removed) can be put in front of
 * the unchanged body of a file without copying it.
 *
 * Every recipient carries its own outcome (R45): its state, the stage that
 * decided it, the reply code, the enhanced status code and the full text.
 * PROTOCOL-RULES R45-R46.
 *
 * Invariants: addresses are checked when added (ms_addr_parse), so nothing
 * stored here can inject a command; a message is owned by its creator, and
 * an engine only borrows it between submit and the result callback.
 */
#ifndef MAILSPOOL_MESSAGE_H
#define MAILSPOOL_MESSAGE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "mailspool/addr.h"
#include "mailspool/encode.h"
#include "mailspool/error.h"
#include "mailspool/reply.h"

typedef enum ms_rcpt_state {
	MS_RCPT_PENDING = 0, /* not yet decided */
	MS_RCPT_ACCEPTED,    /* RCPT got 2xx; the data is not yet confirmed */
	MS_RCPT_DELIVERED,   /* the server took responsibility (2xx to the dot) */
	MS_RCPT_DEFERRED,    /* temporary failure: try again later */
	MS_RCPT_FAILED       /* permanent failure */
} ms_rcpt_state;

typedef enum ms_stage {
	MS_STAGE_NONE = 0,
	MS_STAGE_LOCAL,    /* refused before sending (size, 8-bit, line length) */
	MS_STAGE_CONNECT,
	MS_STAGE_GREETING,
	MS_STAGE_EHLO,
	MS_STAGE_MAIL,
	MS_STAGE_RCPT,
	MS_STAGE_DATA,     /* the reply to DATA (354 expected) */
	MS_STAGE_DOT,      /* the reply after the final dot */
	MS_STAGE_RSET,
	MS_STAGE_SESSION,  /* the connection failed while this was outstanding */
	MS_STAGE_PACKAGE   /* QMTP: the server's K/Z/D reply to the package */
} ms_stage;

/* What decided a recipient's (or message's) fate. code 0: no server reply. */
typedef struct ms_outcome {
	ms_stage stage;
	int code;
	char enh[MS_ENH_MAX];
	char *text; /* reply text or our own explanation; never NULL once set */
} ms_outcome;

typedef struct ms_rcpt {
	char *addr;      /* wire mailbox, without <> */
	unsigned flags;  /* MS_ADDR_UTF8 */
	ms_rcpt_state state;
	ms_outcome out;
	int rcpt_code;   /* what RCPT got (2xx: accepted), kept after the dot; 0 if never answered */
	unsigned notify; /* RFC 3461 NOTIFY bits (mailspool/dsnreq.h), 0: not given */
	char *orcpt;     /* ORCPT "type;address", NULL: not given */
	int dsn_passed;  /* accepted by a server that offers DSN: it reports, not us */
	/* engine bookkeeping */
	int busy;        /* in a transaction that is in flight */
	int retry;       /* got "too many recipients": send again in a new transaction */
} ms_rcpt;

typedef struct ms_segment {
	int fd;          /* -1 for memory */
	off_t off;
	uint64_t len;
	char *mem;       /* owned copy when fd < 0 */
} ms_segment;

#define MS_MESSAGE_TLS_MAX 112

typedef struct ms_message {
	char *sender;      /* wire mailbox; "" is the null sender */
	unsigned sender_flags;
	ms_rcpt *rcpts;
	size_t nrcpts, rcap;
	ms_segment *segs;
	size_t nsegs;
	/* Filled by ms_message_scan: what the encoder saw. */
	int scanned;
	ms_enc stats;
	/* Overall result, set when every recipient is final. */
	int done;
	ms_outcome out;     /* the last reply that concerned the whole message */
	size_t transactions; /* MAIL transactions used (more than one after 452) */
	/* The server answered a command of this message (SMTP) or was sent a
	 * byte of it (QMTP).  A message deferred by a broken session without
	 * this was never attempted: no server can have taken it. */
	int engaged;
	/* SMTP: refused once when sent behind another message's data; the
	 * engine sends it again only when nothing else is outstanding. */
	int solo;
	int dsn_ret;        /* RFC 3461 RET (ms_dsn_ret), 0: not given */
	char *dsn_envid;    /* ENVID, NULL: not given */
	/* How the session that last carried it was secured, set by the engine
	 * each time a server answers for it: "none", or "verified" or
	 * "unverified" with the protocol and cipher ("verified TLSv1.3
	 * TLS_AES_256_GCM_SHA384"); "" when no server ever did. */
	char tls[MS_MESSAGE_TLS_MAX];
	void *user;         /* for the caller */
	size_t id;          /* for the caller */
} ms_message;

ms_message *ms_message_new(const char *sender, ms_error *err);
void ms_message_free(ms_message *m);
ms_status ms_message_add_rcpt(ms_message *m, const char *addr, ms_error *err);
/* The DSN request (RFC 3461), checked as the queue checks it: RET and
 * ENVID for the message, NOTIFY and ORCPT (NULL: none) for recipient i.
 * Sent only to servers that offer DSN. */
ms_status ms_message_set_dsn(ms_message *m, int ret, const char *envid, ms_error *err);
ms_status ms_message_rcpt_dsn(ms_message *m, size_t i, unsigned notify, const char *orcpt,
                              ms_error *err);
/* Append data segments.  For fds, len UINT64_MAX means "to end of file";
 * the fd stays owned by the caller and must stay open until the result. */
ms_status ms_message_add_mem(ms_message *m, const void *p, size_t n, ms_error *err);
ms_status ms_message_add_fd(ms_message *m, int fd, off_t off, uint64_t len, ms_error *err);

/* Read the whole data once to learn size, 8-bit, NUL and line lengths. */
ms_status ms_message_scan(ms_message *m, ms_error *err);

/* Sequential reader over the segments. */
typedef struct ms_reader {
	const ms_message *m;
	size_t seg;
	uint64_t pos;
} ms_reader;
void ms_reader_init(ms_reader *r, const ms_message *m);
/* Read up to n bytes; 0 at the end; -1 on error (err filled). */
ssize_t ms_reader_read(ms_reader *r, char *buf, size_t n, ms_error *err);

/* Set an outcome (copies text). */
ms_status ms_outcome_set(ms_outcome *o, ms_stage stage, int code, const char *enh,
                         const char *text);
void ms_outcome_free(ms_outcome *o);

/* Settle every recipient not yet delivered or failed as `state` with this
 * outcome, and mark the message done: for what happens before, or instead
 * of, a session (no route, no address answered). */
void ms_message_settle(ms_message *m, ms_rcpt_state state, ms_stage stage, int code,
                       const char *enh, const char *text);

/* Deferred only because its session broke before any server saw or
 * answered it (every recipient deferred at MS_STAGE_SESSION, !engaged):
 * no copy can have been delivered, so trying it again at once on another
 * session costs nothing and is not an attempt. */
int ms_message_untried(const ms_message *m);
/* Back to "not yet sent" (every recipient pending, no outcome), for
 * another session. */
void ms_message_reset(ms_message *m);
const char *ms_rcpt_state_name(ms_rcpt_state s);
const char *ms_stage_name(ms_stage s);

/* Counts of recipients in each state. */
typedef struct ms_counts {
	size_t pending, accepted, delivered, deferred, failed;
} ms_counts;
ms_counts ms_message_counts(const ms_message *m);

#endif
