/*
 * mailspool/spawn.h - starting a program of ours: the set-id helper, the
 * delivery agents, the tools setup runs.
 *
 * posix_spawn, never fork: the library never runs its caller's code in a
 * child.  The child gets our environment (a set-id program clears it
 * itself); its standard input and output may be pipes to us, every other
 * descriptor of ours is close-on-exec.
 */
#ifndef MAILSPOOL_SPAWN_H
#define MAILSPOOL_SPAWN_H

#include <sys/types.h>

/* Start path with argv.  With to_child, its standard input is a pipe we
 * write to; with from_child, its standard output is a pipe we read
 * (both close-on-exec on our side).  NULL: it inherits ours.  Returns the
 * pid, or -1 with errno set. */
pid_t ms_spawn(const char *path, char *const argv[], int *to_child, int *from_child);

/* Wait for pid (EINTR retried); its wait status, or -1. */
int ms_spawn_wait(pid_t pid);

#endif
