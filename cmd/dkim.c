/*
 * dkim.c - `mailspool dkim-keygen`: a DKIM key for a domain and selector,
 * and the DNS record to publish (the work is lib/dkimkey.c's).
 *
 * The key is written 0600; run by root it is given to mail_owner, who
 * alone signs with it (SECURITY.md).  An existing file is never replaced:
 * `--txt` prints the record of a key that exists.
 */
#include <errno.h>
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "mailspool/dkim.h"

static const char keygen_usage[] =
    "usage: %s dkim-keygen [-C FILE] [-a rsa-sha256|ed25519-sha256] [-b BITS]\n"
    "                      [-k KEYFILE] [--txt] DOMAIN SELECTOR\n"
    "  Make a DKIM key (default rsa-sha256, 2048 bits) in KEYFILE (default\n"
    "  " MS_SYSCONFDIR "/mailspool/dkim/SELECTOR.DOMAIN.pem), owned by mail_owner,\n"
    "  mode 0600, and print the TXT record to publish and the mailspool.conf\n"
    "  lines that use it.  --txt: print the record of an existing KEYFILE.\n";

/* Letters, digits, hyphens and dots: what a domain or selector may be,
 * and so safe in a file name and in the printed record. */
static int name_ok(const char *s)
{
	if (!*s || *s == '.' || *s == '-' || strlen(s) > 253 || strstr(s, ".."))
		return 0;
	for (; *s; s++)
		if (!(*s >= 'a' && *s <= 'z') && !(*s >= 'A' && *s <= 'Z') && !(*s >= '0' && *s <= '9') &&
		    *s != '-' && *s != '.' && *s != '_')
			return 0;
	return 1;
}

int cmd_dkim_keygen(int argc, char **argv)
{
	const char *confp = NULL, *keyfile = NULL;
	ms_dkim_alg alg = MS_DKIM_ALG_RSA_SHA256;
	unsigned bits = 2048;
	int txt_only = 0;
	static const struct option longs[] = { { "txt", no_argument, NULL, 't' },
		                                   { "help", no_argument, NULL, 'h' },
		                                   { NULL, 0, NULL, 0 } };
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "+C:a:b:k:h", longs, NULL)) != -1) {
		switch (c) {
		case 'C': confp = optarg; break;
		case 'k': keyfile = optarg; break;
		case 't': txt_only = 1; break;
		case 'a':
			if (!strcmp(optarg, "rsa-sha256") || !strcmp(optarg, "rsa"))
				alg = MS_DKIM_ALG_RSA_SHA256;
			else if (!strcmp(optarg, "ed25519-sha256") || !strcmp(optarg, "ed25519"))
				alg = MS_DKIM_ALG_ED25519_SHA256;
			else {
				fprintf(stderr, "%s dkim-keygen: -a wants rsa-sha256 or ed25519-sha256\n",
				        progname);
				return EX_USAGE_;
			}
			break;
		case 'b': {
			char *end;
			unsigned long b = strtoul(optarg, &end, 10);
			if (*end || b < 1024 || b > 8192) {
				fprintf(stderr, "%s dkim-keygen: -b wants 1024 to 8192\n", progname);
				return EX_USAGE_;
			}
			bits = (unsigned)b;
			break;
		}
		case 'h': printf(keygen_usage, progname); return EX_OK_;
		default: fprintf(stderr, keygen_usage, progname); return EX_USAGE_;
		}
	}
	if (argc - optind != 2 || !name_ok(argv[optind]) || !name_ok(argv[optind + 1])) {
		fprintf(stderr, keygen_usage, progname);
		return EX_USAGE_;
	}
	const char *domain = argv[optind], *selector = argv[optind + 1];
	char path[MS_CONF_PATH_MAX];
	if (keyfile)
		snprintf(path, sizeof path, "%s", keyfile);
	else
		snprintf(path, sizeof path, "%s/mailspool/dkim/%s.%s.pem", MS_SYSCONFDIR, selector,
		         domain);
	ms_error err;
	ms_buf txt;
	ms_buf_init(&txt, 1 << 16);
	ms_status st;
	if (txt_only) {
		st = ms_dkim_txt_record(path, domain, selector, &txt, &err);
	} else {
		ms_conf conf;
		int r = cli_load_conf(confp, &conf);
		if (r) {
			ms_buf_free(&txt);
			return r;
		}
		long uid = -1, gid = -1;
		if (geteuid() == 0) {
			uid_t u;
			gid_t g;
			if ((r = cli_owner(&conf, &u, &g))) {
				ms_buf_free(&txt);
				return r;
			}
			uid = (long)u;
			gid = (long)g;
		}
		if (!keyfile) { /* the default directory, root's, readable for the path walk */
			char dir[MS_CONF_PATH_MAX];
			snprintf(dir, sizeof dir, "%s/mailspool", MS_SYSCONFDIR);
			mkdir(dir, 0755);
			snprintf(dir, sizeof dir, "%s/mailspool/dkim", MS_SYSCONFDIR);
			if (mkdir(dir, 0755) < 0 && errno != EEXIST)
				fprintf(stderr, "%s dkim-keygen: cannot make %s: %s\n", progname, dir,
				        strerror(errno));
		}
		st = ms_dkim_keygen(alg, bits, path, uid, gid, domain, selector, &txt, &err);
		if (st == MS_OK) {
			printf("; key written to %s (mode 0600%s%s)\n", path, uid >= 0 ? ", owner " : "",
			       uid >= 0 ? conf.mail_owner : "");
			printf("; in mailspool.conf:\n;   dkim.%s.selector = %s\n;   dkim.%s.key_file = %s\n",
			       domain, selector, domain, path);
			if (alg == MS_DKIM_ALG_ED25519_SHA256)
				printf(";   dkim.%s.algorithm = ed25519-sha256\n", domain);
			printf("; and in the zone of %s:\n", domain);
		}
	}
	if (st != MS_OK) {
		fprintf(stderr, "%s dkim-keygen: %s\n", progname, err.msg);
		ms_buf_free(&txt);
		return cli_exit_for(st);
	}
	fwrite(ms_buf_ptr(&txt), 1, ms_buf_avail(&txt), stdout);
	ms_buf_free(&txt);
	return EX_OK_;
}
