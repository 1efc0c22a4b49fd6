/*
 * mailspool/dl.h - a library opened at run time, by its soname, with the
 * functions we call from it.
 *
 * For the libraries only some processes need (libopendkim to sign,
 * libcurl for MTA-STS, libmicrohttpd for metrics): linked, each would load
 * its dependencies into every process - the set-id helper and the light
 * sendmail included - whether or not it is used.  In a set-id program the
 * dynamic loader ignores LD_LIBRARY_PATH and the like, so the library is
 * the system's.
 */
#ifndef MAILSPOOL_DL_H
#define MAILSPOOL_DL_H

#include <stddef.h>

typedef struct ms_dl_sym {
	const char *name;
	void **slot; /* where the address goes */
} ms_dl_sym;

/* dlopen(soname) and every symbol into its slot: the handle, or NULL with
 * why ("what needs LIB: ...") and nothing left open. */
void *ms_dl_open(const char *soname, const char *what, const ms_dl_sym *syms, size_t n,
                 char *why, size_t wn);

#endif
