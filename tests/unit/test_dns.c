/* DNS answers read by the DANE lookup: TLSA records parsed from wire
 * format, usable ones kept (RFC 7672 3.1: DANE-TA(2), DANE-EE(3)),
 * others counted; malformed answers refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "mailspool/dns.h"

/* An answer for _25._tcp.mx.t TLSA with the given records (rdata). */
static size_t answer(unsigned char *out, const unsigned char (*rd)[40], const size_t *rdlen,
                     size_t n)
{
	static const unsigned char name[] = "\x03_25\x04_tcp\x02mx\x01t";
	size_t k = 0;
	const unsigned char hdr[12] = { 0x12, 0x34, 0x81, 0xa0, 0, 1, 0, (unsigned char)n, 0, 0, 0, 0 };
	memcpy(out, hdr, 12);
	k = 12;
	memcpy(out + k, name, sizeof name); /* with its root label */
	k += sizeof name;
	const unsigned char qt[4] = { 0, 52, 0, 1 };
	memcpy(out + k, qt, 4);
	k += 4;
	for (size_t i = 0; i < n; i++) {
		out[k++] = 0xc0; /* a pointer to the question's name */
		out[k++] = 12;
		const unsigned char rr[10] = { 0, 52, 0, 1, 0, 0, 1, 0x2c, 0, (unsigned char)rdlen[i] };
		memcpy(out + k, rr, 10);
		k += 10;
		memcpy(out + k, rd[i], rdlen[i]);
		k += rdlen[i];
	}
	return k;
}

static void test_usable_and_unusable(void **state)
{
	(void)state;
	unsigned char rd[3][40];
	size_t len[3] = { 35, 35, 35 };
	for (int i = 0; i < 3; i++)
		memset(rd[i], 0xab, sizeof rd[i]);
	rd[0][0] = 3, rd[0][1] = 1, rd[0][2] = 1; /* DANE-EE SPKI SHA-256 */
	rd[1][0] = 1, rd[1][1] = 1, rd[1][2] = 1; /* PKIX-EE: not for SMTP */
	rd[2][0] = 2, rd[2][1] = 0, rd[2][2] = 1; /* DANE-TA cert SHA-256 */
	unsigned char buf[512];
	size_t n = answer(buf, rd, len, 3);
	ms_tlsa_set set;
	assert_int_equal(ms_dns_parse_tlsa(buf, (int)n, &set), 0);
	assert_int_equal(set.n, 2);
	assert_int_equal(set.unusable, 1);
	assert_int_equal(set.r[0].usage, 3);
	assert_int_equal(set.r[1].usage, 2);
	assert_int_equal(set.r[1].len, 32);
	assert_int_equal(set.r[1].data[31], 0xab);
	/* Cut anywhere: refused, never read past the end. */
	for (size_t cut = 12; cut < n; cut++)
		assert_int_equal(ms_dns_parse_tlsa(buf, (int)cut, &set), -1);
}

static void test_odd_records(void **state)
{
	(void)state;
	unsigned char rd[3][40];
	size_t len[3] = { 3, 35, 2 };
	memset(rd, 0, sizeof rd);
	rd[0][0] = 3, rd[0][1] = 1, rd[0][2] = 1; /* no data at all */
	rd[1][0] = 3, rd[1][1] = 2, rd[1][2] = 1; /* selector 2: unknown */
	rd[2][0] = 3;                             /* shorter than its fields */
	unsigned char buf[512];
	size_t n = answer(buf, rd, len, 3);
	ms_tlsa_set set;
	assert_int_equal(ms_dns_parse_tlsa(buf, (int)n, &set), 0);
	assert_int_equal(set.n, 0);
	assert_int_equal(set.unusable, 3);
	/* A name pointer that loops: malformed. */
	buf[12 + 15 + 4] = 0xc0;
	buf[12 + 15 + 5] = (unsigned char)(12 + 15 + 4);
	assert_int_equal(ms_dns_parse_tlsa(buf, (int)n, &set), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_usable_and_unusable),
		cmocka_unit_test(test_odd_records),
	};
	return cmocka_run_group_tests_name("dns", tests, NULL, NULL);
}
