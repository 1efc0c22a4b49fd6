/*
 * dl.c - a library opened at run time (see mailspool/dl.h).
 */
#include "mailspool/dl.h"

#include <dlfcn.h>
#include <stdio.h>

void *ms_dl_open(const char *soname, const char *what, const ms_dl_sym *syms, size_t n,
                 char *why, size_t wn)
{
	void *dl = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
	if (!dl) {
		snprintf(why, wn, "%s needs %s: %s", what, soname, dlerror());
		return NULL;
	}
	for (size_t i = 0; i < n; i++)
		if (!(*syms[i].slot = dlsym(dl, syms[i].name))) {
			snprintf(why, wn, "%s: %s has no %s", what, soname, syms[i].name);
			dlclose(dl);
			return NULL;
		}
	return dl;
}
