/* fuzz_smtpin - the two parsers of the null client's front door.
 * Byte 0 chooses:
 *  even: the `sendmail -bs` dialogue (ms_smtpin_run) on the rest as the
 *        client's input.  Every message it hands over must have a sender
 *        and recipients that ms_addr_parse accepts (or a bare local name),
 *        at most MS_SMTPIN_RCPTS_MAX of them, and data within SIZE; every
 *        reply it writes must be a 3-digit code, a space or dash, and text
 *        of printable ASCII ending in CRLF.
 *  odd:  an aliases file (the rest up to a NUL) and the names after it
 *        expanded: loading never crashes, expanding always ends within
 *        MS_ALIASES_STEPS_MAX, and what comes out of the file never holds a
 *        control byte.
 * Under ASan/UBSan this is where a line or path that overruns a buffer
 * shows up. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "mailspool/addr.h"
#include "mailspool/aliases.h"
#include "mailspool/smtpin.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_SIZE 4096

static int memfd_of(const uint8_t *p, size_t n)
{
	int fd = memfd_create("fuzz", 0);
	if (fd < 0 || (n && write(fd, p, n) != (ssize_t)n) || lseek(fd, 0, SEEK_SET) != 0)
		abort();
	return fd;
}

static void check_mailbox(const char *a, ms_addr_role role)
{
	char wire[MS_ADDR_MAX + 1];
	if (role == MS_ADDR_RECIPIENT && !strchr(a, '@')) {
		for (const char *p = a; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				abort();
		if (!*a || strlen(a) > MS_ADDR_LOCAL_MAX)
			abort();
		return;
	}
	if (ms_addr_parse(a, strlen(a), role, wire, NULL, NULL) != MS_OK)
		abort();
}

static ms_status queue(void *ctx, const ms_smtpin_msg *m, char *id, size_t idn, ms_error *err)
{
	(void)ctx;
	(void)err;
	check_mailbox(m->sender, MS_ADDR_SENDER);
	if (!m->nrcpts || m->nrcpts > MS_SMTPIN_RCPTS_MAX)
		abort();
	for (size_t i = 0; i < m->nrcpts; i++)
		check_mailbox(m->rcpts[i], MS_ADDR_RECIPIENT);
	off_t end = lseek(m->fd, 0, SEEK_END);
	if (end < 0 || end > MAX_SIZE)
		abort();
	snprintf(id, idn, "fuzz");
	return MS_OK;
}

static void check_replies(int fd)
{
	off_t n = lseek(fd, 0, SEEK_END);
	char *b = malloc((size_t)n + 1);
	if (!b || pread(fd, b, (size_t)n, 0) != n)
		abort();
	for (off_t i = 0; i < n;) {
		if (n - i < 6 || b[i] < '2' || b[i] > '5' || b[i + 1] < '0' || b[i + 1] > '9' ||
		    b[i + 2] < '0' || b[i + 2] > '9' || (b[i + 3] != ' ' && b[i + 3] != '-'))
			abort();
		off_t j = i + 4;
		while (j < n && b[j] != '\r') {
			if (b[j] < 0x20 || b[j] > 0x7e)
				abort();
			j++;
		}
		if (j + 1 >= n || b[j + 1] != '\n')
			abort();
		i = j + 2;
	}
	free(b);
}

static int emit(void *ctx, const char *addr)
{
	size_t *count = ctx;
	for (const char *p = addr; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			abort();
	return ++*count > MS_ALIASES_STEPS_MAX; /* the budget stops it first */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (!(data[0] & 1)) {
		int in = memfd_of(data + 1, size - 1), out = memfd_of(NULL, 0);
		ms_smtpin_opts o = { .hostname = "fuzz.example.test", .max_size = MAX_SIZE,
			                 .command_timeout_ms = 1000, .data_timeout_ms = 1000 };
		ms_smtpin_ops ops = { .queue = queue };
		ms_smtpin_stats st;
		ms_error err;
		ms_smtpin_run(in, out, &o, &ops, &st, &err);
		check_replies(out);
		close(in);
		close(out);
		return 0;
	}
	const uint8_t *nul = memchr(data + 1, 0, size - 1);
	size_t flen = nul ? (size_t)(nul - data - 1) : size - 1;
	char path[64];
	int fd = memfd_of(data + 1, flen);
	snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
	ms_aliases a;
	ms_error err;
	if (ms_aliases_load(&a, path, NULL, NULL, &err) == MS_OK) {
		char names[512] = "root";
		if (nul) {
			size_t nl = size - (size_t)(nul + 1 - data);
			snprintf(names, sizeof names, "%.*s", (int)(nl < 511 ? nl : 511), nul + 1);
		}
		char *save;
		for (char *t = strtok_r(names, " \n", &save); t; t = strtok_r(NULL, " \n", &save)) {
			size_t count = 0, k = 0;
			while (t[k] && (unsigned char)t[k] >= 0x20 && t[k] != 0x7f)
				k++;
			if (t[k])
				continue; /* a name as given comes back as given: only the file's
				           * targets are checked here (submit checks the rest) */
			int r = ms_aliases_expand(&a, t, "fuzz.example.test",
			                          (t[0] & 1) ? "" : "admin@x.test", emit, &count);
			if (r != 0 && r != -2)
				abort();
		}
		ms_aliases_free(&a);
	}
	close(fd);
	return 0;
}
