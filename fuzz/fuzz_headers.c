/* fuzz_headers - address-list parsing and Bcc removal on arbitrary bytes.
 * Invariants: no crash; removal never grows the block and leaves no field
 * named Bcc. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "mailspool/headers.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int count(void *ctx, const char *addr)
{
	(void)addr;
	(*(size_t *)ctx)++;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *h = malloc(size + 1);
	memcpy(h, data, size);
	h[size] = '\0';
	size_t n = 0;
	ms_hdr_addresses(h, size, "To", count, &n);
	ms_hdr_parse_list(h, size, count, &n);
	size_t len = ms_hdr_remove(h, size, "Bcc");
	if (len > size)
		abort();
	/* No line may start a Bcc field after removal. */
	for (size_t i = 0; i + 4 <= len; i++)
		if ((i == 0 || h[i - 1] == '\n') && !strncasecmp(h + i, "bcc:", 4))
			abort();
	free(h);
	return 0;
}
