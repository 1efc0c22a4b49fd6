/*
 * mailspool/version.h - the version of libmailspool and its programs.
 *
 * One number for the library, the programs (`mailspool --version`), the
 * shared library's soname (libmailspool.so.MAJOR) and the pkg-config file;
 * the Makefile reads it from here.  MS_VERSION is what the headers say at
 * build time, ms_version() what the library linked at run time says.
 */
#ifndef MAILSPOOL_VERSION_H
#define MAILSPOOL_VERSION_H

#define MS_VERSION_MAJOR 0
#define MS_VERSION_MINOR 13
#define MS_VERSION_PATCH 0
#define MS_VERSION "0.13.0"

const char *ms_version(void);

#endif
