/* fuzz_addr - envelope address checks on arbitrary bytes.
 * Invariants: an accepted address has no control bytes, fits a path, and is
 * accepted again unchanged when parsed a second time. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mailspool/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	for (int role = 0; role < 2; role++) {
		char out[MS_ADDR_MAX + 1], again[MS_ADDR_MAX + 1];
		ms_error err;
		if (ms_addr_parse((const char *)data, size, (ms_addr_role)role, out, NULL, &err) != MS_OK)
			continue;
		size_t n = strlen(out);
		if (n + 2 > MS_ADDR_PATH_MAX)
			abort();
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)out[i] < 0x20 || out[i] == 0x7f)
				abort();
		if (ms_addr_parse(out, n, (ms_addr_role)role, again, NULL, &err) != MS_OK ||
		    strcmp(out, again) != 0)
			abort();
	}
	return 0;
}
