/*
 * version.c - the library's version at run time (see mailspool/version.h).
 */
#include "mailspool/version.h"

const char *ms_version(void)
{
	return MS_VERSION;
}
