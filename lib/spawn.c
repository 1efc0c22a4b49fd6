/*
 * spawn.c - starting a program of ours with pipes (see mailspool/spawn.h).
 */
#include "mailspool/spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

pid_t ms_spawn(const char *path, char *const argv[], int *to_child, int *from_child)
{
	int in[2] = { -1, -1 }, out[2] = { -1, -1 };
	if ((to_child && pipe2(in, O_CLOEXEC) < 0) || (from_child && pipe2(out, O_CLOEXEC) < 0)) {
		int e = errno;
		if (in[0] >= 0)
			close(in[0]), close(in[1]);
		errno = e;
		return -1;
	}
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	if (to_child)
		posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
	if (from_child)
		posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
	pid_t pid;
	int e = posix_spawn(&pid, path, &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (to_child)
		close(in[0]);
	if (from_child)
		close(out[1]);
	if (e) {
		if (to_child)
			close(in[1]);
		if (from_child)
			close(out[0]);
		errno = e;
		return -1;
	}
	if (to_child)
		*to_child = in[1];
	if (from_child)
		*from_child = out[0];
	return pid;
}

int ms_spawn_wait(pid_t pid)
{
	int status;
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -1;
	return status;
}
