/* fuzz_envelope - the envelope file format.
 * 1. Arbitrary bytes as an envelope file: no crash; whatever parses
 *    serialises back to exactly the same bytes (one spelling per envelope).
 * 2. Arbitrary bytes cut into string fields (sender, addresses, enhanced
 *    codes, texts, history): serialise, parse, and every field comes back
 *    unchanged - any byte string fits in any field without adding one. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/envelope.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *piece(const uint8_t **p, size_t *n, size_t max)
{
	size_t k = 0;
	while (k < *n && k < max && (*p)[k] != 0xff)
		k++;
	char *s = malloc(k + 1);
	for (size_t i = 0; i < k; i++)
		s[i] = (*p)[i] ? (char)(*p)[i] : 'x'; /* C strings: no NUL */
	s[k] = '\0';
	*p += k < *n ? k + 1 : k;
	*n -= k < *n ? k + 1 : k;
	return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	ms_envelope e, back;
	ms_buf b;
	/* 1 */
	if (ms_env_parse((const char *)data, size, &e, NULL) == MS_OK) {
		ms_buf_init(&b, 0);
		if (ms_env_serialize(&e, &b, NULL) != MS_OK || ms_buf_avail(&b) != size ||
		    memcmp(ms_buf_ptr(&b), data, size))
			abort();
		ms_buf_free(&b);
		ms_env_free(&e);
	}
	/* 2 */
	const uint8_t *p = data;
	size_t n = size;
	ms_env_init(&e);
	memcpy(e.id, "fuzz-id_1", 10);
	e.arrival = (int64_t)size;
	char *s = piece(&p, &n, 300);
	ms_env_set_sender(&e, s, NULL);
	free(s);
	for (int r = 0; r < 3 && n > 0; r++) {
		char *addr = piece(&p, &n, 300), *enh = piece(&p, &n, 15), *text = piece(&p, &n, 3000);
		char *tls = piece(&p, &n, 200); /* any bytes, cut to MS_ENV_TLS_MAX */
		ms_env_add_rcpt(&e, addr, -(int64_t)r, NULL);
		ms_env_record_attempt(&e.rcpts[e.nrcpts - 1], 7, 451, enh, text, tls, NULL);
		free(tls);
		e.rcpts[e.nrcpts - 1].state = (ms_env_state)(r % MS_ENV_NSTATES);
		free(addr);
		free(enh);
		free(text);
	}
	ms_buf_init(&b, 0);
	if (ms_env_serialize(&e, &b, NULL) != MS_OK)
		abort();
	if (ms_env_parse(ms_buf_ptr(&b), ms_buf_avail(&b), &back, NULL) != MS_OK)
		abort();
	if (strcmp(back.sender, e.sender) || back.nrcpts != e.nrcpts)
		abort();
	for (size_t i = 0; i < e.nrcpts; i++) {
		const ms_env_rcpt *x = &e.rcpts[i], *y = &back.rcpts[i];
		if (strcmp(x->addr, y->addr) || strcmp(x->text, y->text) || strcmp(x->enh, y->enh) ||
		    x->state != y->state || x->next != y->next || x->nhist != y->nhist ||
		    strcmp(x->hist[0].text, y->hist[0].text) || strcmp(x->hist[0].tls, y->hist[0].tls))
			abort();
	}
	ms_buf_free(&b);
	ms_env_free(&e);
	ms_env_free(&back);
	return 0;
}
