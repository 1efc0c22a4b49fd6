/*
 * faultinject.c - an LD_PRELOAD library that makes the Nth file-system
 * operation of a process fail or kill it, for the crash tests.
 *
 *   MS_FAULT_AT=N          the operation to hit (1-based); unset: only count
 *   MS_FAULT_ACTION=kill   SIGKILL before the operation (a crash)
 *                  after  SIGKILL right after it succeeded
 *                  eio    fail it with EIO;  enospc: fail it with ENOSPC
 *   MS_FAULT_COUNT=FILE    write the number of operations seen at exit
 *
 * Counted operations: open/openat that create, write to a descriptor above
 * 2, fsync, close of a descriptor above 2, rename/renameat, link/linkat,
 * unlink/unlinkat - every step of the commit protocol.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static long seen, at = -1;
static int action; /* 0 kill, 1 after, 2 eio, 3 enospc */

__attribute__((constructor)) static void init(void)
{
	const char *a = getenv("MS_FAULT_AT"), *x = getenv("MS_FAULT_ACTION");
	if (a)
		at = strtol(a, NULL, 10);
	if (x)
		action = !strcmp(x, "after") ? 1 : !strcmp(x, "eio") ? 2 : !strcmp(x, "enospc") ? 3 : 0;
}

__attribute__((destructor)) static void fini(void)
{
	const char *f = getenv("MS_FAULT_COUNT");
	if (f) {
		FILE *o = fopen(f, "w");
		if (o) {
			fprintf(o, "%ld\n", seen);
			fclose(o);
		}
	}
}

/* Before an operation: 1 if it must fail (errno set), kills if asked. */
static int before(void)
{
	if (++seen != at)
		return 0;
	if (action == 0)
		kill(getpid(), SIGKILL);
	if (action >= 2) {
		errno = action == 2 ? EIO : ENOSPC;
		return 1;
	}
	return 0;
}

static void after(void)
{
	if (seen == at && action == 1)
		kill(getpid(), SIGKILL);
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t write(int fd, const void *p, size_t n)
{
	if (fd <= 2)
		return REAL(write)(fd, p, n);
	if (before())
		return -1;
	ssize_t r = REAL(write)(fd, p, n);
	after();
	return r;
}

int fsync(int fd)
{
	if (before())
		return -1;
	int r = REAL(fsync)(fd);
	after();
	return r;
}

int close(int fd)
{
	if (fd <= 2)
		return REAL(close)(fd);
	if (before()) {
		REAL(close)(fd); /* the descriptor is gone either way, as close(2) says */
		return -1;
	}
	int r = REAL(close)(fd);
	after();
	return r;
}

int openat(int dfd, const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (flags & O_CREAT) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
		if (before())
			return -1;
	}
	int r = REAL(openat)(dfd, path, flags, mode);
	if (flags & O_CREAT)
		after();
	return r;
}

int open(const char *path, int flags, ...)
{
	mode_t mode = 0;
	if (flags & O_CREAT) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	return openat(AT_FDCWD, path, flags, mode); /* counted there */
}

int renameat(int a, const char *p, int b, const char *q)
{
	if (before())
		return -1;
	int r = REAL(renameat)(a, p, b, q);
	after();
	return r;
}

int rename(const char *p, const char *q)
{
	if (before())
		return -1;
	int r = REAL(rename)(p, q);
	after();
	return r;
}

int linkat(int a, const char *p, int b, const char *q, int fl)
{
	if (before())
		return -1;
	int r = REAL(linkat)(a, p, b, q, fl);
	after();
	return r;
}

int unlinkat(int d, const char *p, int fl)
{
	if (before())
		return -1;
	int r = REAL(unlinkat)(d, p, fl);
	after();
	return r;
}
