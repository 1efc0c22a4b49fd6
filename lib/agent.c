/*
 * agent.c - the delivery agent's work and result grammars, and its run
 * (see mailspool/agent.h).
 */
#include "mailspool/agent.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mailspool/deliver.h"
#include "mailspool/message.h"

/* ---- the scheduler's side ------------------------------------------------ */

static ms_status put_field(ms_buf *b, const char *s)
{
	ms_status st = ms_buf_append(b, "=", 1);
	return st == MS_OK ? ms_env_escape(b, s, strlen(s)) : st;
}

ms_status ms_agent_work_begin(ms_buf *b, const char *key)
{
	ms_status st = ms_buf_appendstr(b, "K ");
	if (st == MS_OK)
		st = put_field(b, key);
	return st == MS_OK ? ms_buf_append(b, "\n", 1) : st;
}

ms_status ms_agent_work_message(ms_buf *b, size_t item, const ms_envelope *e, const size_t *idx,
                                size_t n)
{
	ms_status st = ms_buf_printf(b, "M %zu %s %llu ", item, e->id, (unsigned long long)e->size);
	if (st == MS_OK)
		st = put_field(b, e->sender);
	if (st == MS_OK)
		st = ms_buf_printf(b, " %zu\n", n);
	for (size_t i = 0; i < n && st == MS_OK; i++) {
		st = ms_buf_printf(b, "T %zu ", idx[i]);
		if (st == MS_OK)
			st = put_field(b, e->rcpts[idx[i]].addr);
		if (st == MS_OK)
			st = ms_buf_append(b, "\n", 1);
	}
	return st;
}

ms_status ms_agent_work_end(ms_buf *b)
{
	return ms_buf_append(b, "E\n", 2);
}

/* "=escaped" at p up to a space or the end: a new string, or NULL. */
static char *field(const char *p, const char **end, size_t max)
{
	if (*p != '=')
		return NULL;
	const char *e = p + 1 + strcspn(p + 1, " ");
	if (end)
		*end = e;
	return ms_env_unescape(p + 1, (size_t)(e - p - 1), max);
}

int ms_agent_parse_result(const char *line, size_t *item, ms_sched_result *r)
{
	if (!strcmp(line, "U"))
		return 'U';
	int off = 0;
	if (line[0] == 'D' && sscanf(line, "D %zu%n", item, &off) == 1 && !line[off])
		return 'D';
	memset(r, 0, sizeof *r);
	int state;
	char enh[32];
	if (sscanf(line, "R %zu %zu %d %d %31s %n", item, &r->rcpt, &state, &r->code, enh, &off) < 5 ||
	    !off || state < 0 || state > MS_RCPT_FAILED)
		return 0;
	const char *p = line + off, *end;
	char *relay = field(p, &end, MS_RELAY_DESC_MAX - 1);
	char *text = relay && *end == ' ' ? field(end + 1, NULL, MS_ENV_TEXT_MAX - 1) : NULL;
	r->state = (ms_rcpt_state)state;
	snprintf(r->enh, sizeof r->enh, "%.15s", strcmp(enh, "-") ? enh : "");
	snprintf(r->relay, sizeof r->relay, "%s", relay ? relay : "none");
	snprintf(r->text, sizeof r->text, "%s", text ? text : "(unreadable result)");
	free(relay);
	free(text);
	return 'R';
}

/* ---- the agent's side ---------------------------------------------------- */

typedef struct work_msg {
	size_t item;
	ms_envelope env;  /* id, size, sender and just this destination's recipients */
	size_t *idx;      /* their indexes in the queued envelope */
	int fd;
} work_msg;

typedef struct agent {
	int out_fd;
	int broken;       /* the scheduler stopped reading: nothing more to say */
	work_msg *msgs;
	size_t n;
} agent;

static void say(agent *a, const char *p, size_t n)
{
	while (n > 0 && !a->broken) {
		ssize_t w = write(a->out_fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			a->broken = 1;
			return;
		}
		p += w;
		n -= (size_t)w;
	}
}

static void on_result(void *ctx, ms_message *m, const char *relay)
{
	agent *a = ctx;
	work_msg *w = &a->msgs[m->id];
	ms_sched_result *r = calloc(m->nrcpts ? m->nrcpts : 1, sizeof *r);
	ms_buf line;
	ms_buf_init(&line, 0);
	if (r)
		ms_sched_results(m, w->idx, relay, r);
	for (size_t i = 0; r && i < m->nrcpts; i++) {
		ms_buf_reset(&line);
		if (ms_buf_printf(&line, "R %zu %zu %d %d %s ", w->item, r[i].rcpt, (int)r[i].state,
		                  r[i].code, r[i].enh[0] ? r[i].enh : "-") == MS_OK &&
		    put_field(&line, r[i].relay) == MS_OK && ms_buf_append(&line, " ", 1) == MS_OK &&
		    put_field(&line, r[i].text) == MS_OK && ms_buf_append(&line, "\n", 1) == MS_OK)
			say(a, ms_buf_ptr(&line), ms_buf_avail(&line));
	}
	/* Out of memory: the message is not reported as complete, so the
	 * scheduler defers what is missing. */
	if (r) {
		ms_buf_reset(&line);
		if (ms_buf_printf(&line, "D %zu\n", w->item) == MS_OK)
			say(a, ms_buf_ptr(&line), ms_buf_avail(&line));
	}
	ms_buf_free(&line);
	free(r);
	if (w->fd >= 0) {
		close(w->fd); /* the engine is done with this message */
		w->fd = -1;
	}
}

/* Read all of in_fd (capped). */
static ms_status slurp(int fd, ms_buf *b, ms_error *err)
{
	char chunk[65536];
	for (;;) {
		ssize_t n = read(fd, chunk, sizeof chunk);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return ms_error_set(err, MS_ERR_IO, "cannot read the work: %s", strerror(errno));
		if (n == 0)
			return MS_OK;
		if (ms_buf_append(b, chunk, (size_t)n) != MS_OK)
			return ms_error_set(err, MS_ERR_USAGE, "work larger than %u octets",
			                    MS_AGENT_WORK_MAX);
	}
}

static ms_status bad_work(ms_error *err, size_t lineno)
{
	return ms_error_set(err, MS_ERR_USAGE, "malformed work at line %zu", lineno);
}

/* Parse the whole work before anything is delivered. */
static ms_status parse_work(agent *a, char *p, char **key, ms_error *err)
{
	size_t lineno = 0, want = 0, cap = 0;
	int ended = 0;
	*key = NULL;
	work_msg *cur = NULL;
	for (char *save, *l = strtok_r(p, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		lineno++;
		if (ended)
			return bad_work(err, lineno);
		if (l[0] == 'K' && l[1] == ' ' && !*key) {
			if (!(*key = field(l + 2, NULL, MS_DEST_MAX - 1)))
				return bad_work(err, lineno);
		} else if (l[0] == 'M' && *key && want == 0) {
			if (a->n == cap) {
				size_t nc = cap ? cap * 2 : 16;
				work_msg *q = realloc(a->msgs, nc * sizeof *q);
				if (!q)
					return ms_error_set(err, MS_ERR_NOMEM, "out of memory");
				a->msgs = q;
				cap = nc;
			}
			cur = &a->msgs[a->n];
			memset(cur, 0, sizeof *cur);
			ms_env_init(&cur->env);
			cur->fd = -1;
			a->n++;
			char id[MS_ENV_ID_MAX + 2];
			unsigned long long size;
			int off = 0;
			if (sscanf(l, "M %zu %33s %llu %n", &cur->item, id, &size, &off) < 3 || !off ||
			    !ms_env_id_ok(id))
				return bad_work(err, lineno);
			const char *end;
			char *sender = field(l + off, &end, MS_ENV_TEXT_MAX);
			int used = 0;
			if (!sender || sscanf(end, " %zu%n", &want, &used) != 1 || end[used] || want == 0 ||
			    want > MS_ENV_MAX_RCPTS) {
				free(sender);
				return bad_work(err, lineno);
			}
			snprintf(cur->env.id, sizeof cur->env.id, "%.32s", id);
			cur->env.size = size;
			ms_status st = ms_env_set_sender(&cur->env, sender, err);
			free(sender);
			if (st != MS_OK || !(cur->idx = calloc(want, sizeof *cur->idx)))
				return st != MS_OK ? st : ms_error_set(err, MS_ERR_NOMEM, "out of memory");
		} else if (l[0] == 'T' && cur && want > 0) {
			size_t ri;
			int off = 0;
			if (sscanf(l, "T %zu %n", &ri, &off) < 1 || !off)
				return bad_work(err, lineno);
			char *addr = field(l + off, NULL, 1024);
			if (!addr)
				return bad_work(err, lineno);
			cur->idx[cur->env.nrcpts] = ri;
			ms_status st = ms_env_add_rcpt(&cur->env, addr, 0, err);
			free(addr);
			if (st != MS_OK)
				return st;
			want--;
		} else if (!strcmp(l, "E") && *key && want == 0) {
			ended = 1;
		} else {
			return bad_work(err, lineno);
		}
	}
	return ended ? MS_OK : ms_error_set(err, MS_ERR_USAGE, "the work has no end (E)");
}

ms_status ms_agent_run(const ms_conf *conf, ms_spool *sp, int in_fd, int out_fd, ms_error *err)
{
	agent a = { .out_fd = out_fd };
	ms_buf work;
	ms_buf_init(&work, MS_AGENT_WORK_MAX);
	char *key = NULL;
	ms_message **msgs = NULL;
	size_t nm = 0;
	ms_status st = slurp(in_fd, &work, err);
	if (st == MS_OK && ms_buf_reserve(&work, 1) == MS_OK) {
		work.data[work.len] = '\0';
		st = parse_work(&a, work.data + work.off, &key, err);
	}
	if (st == MS_OK && !(msgs = calloc(a.n ? a.n : 1, sizeof *msgs)))
		st = ms_error_set(err, MS_ERR_NOMEM, "out of memory");
	for (size_t i = 0; st == MS_OK && i < a.n; i++) {
		work_msg *w = &a.msgs[i];
		size_t *all = calloc(w->env.nrcpts, sizeof *all);
		ms_error merr;
		ms_status ms_ = all ? MS_OK : MS_ERR_NOMEM;
		for (size_t k = 0; all && k < w->env.nrcpts; k++)
			all[k] = k;
		if (ms_ == MS_OK)
			ms_ = ms_sched_message(sp, &w->env, all, w->env.nrcpts, &msgs[nm], &w->fd, &merr);
		free(all);
		if (ms_ != MS_OK) {
			/* This one cannot even be read: deferred with the reason. */
			ms_message *m = ms_message_new(w->env.sender, NULL);
			if (!m)
				continue;
			for (size_t k = 0; k < w->env.nrcpts; k++)
				ms_message_add_rcpt(m, w->env.rcpts[k].addr, NULL);
			m->id = i;
			ms_message_settle(m, MS_RCPT_DEFERRED, MS_STAGE_LOCAL, 0, "4.3.0",
			                  ms_ == MS_ERR_NOMEM ? "out of memory" : merr.msg);
			on_result(&a, m, "none");
			ms_message_free(m);
			continue;
		}
		msgs[nm++]->id = i;
	}
	if (st == MS_OK && nm) {
		ms_deliver_opts dopt = { .conf = conf, .on_result = on_result, .ctx = &a };
		ms_deliver_report rep;
		ms_error derr;
		ms_deliver(&dopt, key, msgs, nm, &rep, &derr);
		if (rep.unreachable)
			say(&a, "U\n", 2);
	}
	for (size_t i = 0; i < nm; i++)
		ms_message_free(msgs[i]);
	for (size_t i = 0; i < a.n; i++) {
		ms_env_free(&a.msgs[i].env);
		free(a.msgs[i].idx);
		if (a.msgs[i].fd >= 0)
			close(a.msgs[i].fd);
	}
	free(a.msgs);
	free(msgs);
	free(key);
	ms_buf_free(&work);
	return st;
}
