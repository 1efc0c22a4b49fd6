# mailspool - build, test, demo, bench, install.
#
#   make            library and programs (build/)
#   make check      install missing deps, build with -Werror, unit tests (also
#                   under ASan/UBSan), integration and hostile-server tests
#                   (with the program also built with ASan/UBSan), crash tests
#   make demo       Postfix and smtp-sink on 127.0.0.1: batches through mailspool, then
#                   sendmail, the spool and the daemon delivering by MX (dnsmasq)
#   make bench      latency-proxy benchmarks against peers (bench/RESULTS.md):
#                   SMTP/QMTP sessions, spool, TLS+AUTH, the daemon end to end
#   make install    PREFIX=/usr/local DESTDIR=
#   make asan       the sanitizer build in build-asan/
#   make fuzz       libFuzzer on every parser (FUZZ_SECONDS each, clang)

# Recursive makes would print "Leaving directory" after the test summary.
MAKEFLAGS += --no-print-directory

CC      ?= cc
PREFIX  ?= /usr/local
DESTDIR ?=
# Compiled into the programs: the set-id helper reads only SYSCONFDIR's
# mailspool.conf, and the programs find their helpers in LIBEXECDIR.
SYSCONFDIR ?= /etc
LIBEXECDIR ?= $(PREFIX)/libexec/mailspool
UNITDIR    ?= /etc/systemd/system
BUILD   ?= build
PYTHON  ?= /usr/bin/python3

WARN     = -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
           -Wno-missing-field-initializers
CSTD     = -std=c11 -D_GNU_SOURCE
CFLAGS  ?= -O2 -g
PATHS    = -DMS_SYSCONFDIR='"$(SYSCONFDIR)"' -DMS_LIBEXECDIR='"$(LIBEXECDIR)"' \
           -DMS_BINDIR='"$(PREFIX)/bin"'
ALL_CFLAGS = $(CSTD) $(WARN) $(CFLAGS) $(EXTRA_CFLAGS) $(PATHS) -Iinclude -MMD -MP
LDLIBS   = -lssl -lcrypto -lcares -lmd
# One version (include/mailspool/version.h): programs, soname, pkg-config.
VERSION := $(shell sed -n 's/^\#define MS_VERSION "\(.*\)"/\1/p' include/mailspool/version.h)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))
SONAME   = libmailspool.so.$(SOMAJOR)

LIB_SRC  = $(wildcard lib/*.c)
LIB_OBJ  = $(LIB_SRC:lib/%.c=$(BUILD)/lib/%.o)
UNIT_SRC = $(wildcard tests/unit/test_*.c)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
BENCH_BIN = $(BUILD)/bench/latproxy
FUZZERS  = reply addr encode headers qmtp envelope sasl submit smtpin policy
REPLAY_BIN = $(FUZZERS:%=$(BUILD)/fuzz/replay_%)
FUZZ_SECONDS ?= 60

.PHONY: all check check-cluster unit integration integration-asan asan demo bench install clean deps fuzz fuzz-replay

PROGRAMS = $(BUILD)/mailspool $(BUILD)/mailspool-drop $(BUILD)/mailspool-deliver \
           $(BUILD)/mailspool-sendmail

all: $(BUILD)/libmailspool.a $(BUILD)/libmailspool.so.$(VERSION) $(BUILD)/mailspool.pc \
     $(PROGRAMS)

# Position-independent: the same objects make the static and the shared
# library (the programs link the static one).
$(BUILD)/lib/%.o: lib/%.c Makefile
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -fPIC -c -o $@ $<

# libopendkim is opened at run time (lib/dkim.c): its soname from the
# library installed here.
OPENDKIM_SONAME := $(shell objdump -p $$(pkg-config --variable=libdir opendkim 2>/dev/null)/libopendkim.so 2>/dev/null | sed -n 's/^ *SONAME *//p')
$(BUILD)/lib/dkim.o: ALL_CFLAGS += $(if $(OPENDKIM_SONAME),-DMS_OPENDKIM_SONAME='"$(OPENDKIM_SONAME)"')
# libcurl too (lib/https.c, MTA-STS policies).
CURL_SONAME := $(shell objdump -p $$(pkg-config --variable=libdir libcurl 2>/dev/null)/libcurl.so 2>/dev/null | sed -n 's/^ *SONAME *//p')
$(BUILD)/lib/https.o: ALL_CFLAGS += $(if $(CURL_SONAME),-DMS_CURL_SONAME='"$(CURL_SONAME)"')

$(BUILD)/libmailspool.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/libmailspool.so.$(VERSION): $(LIB_OBJ)
	$(CC) $(CFLAGS) $(EXTRA_CFLAGS) -shared -Wl,-soname,$(SONAME) -o $@ $^ $(LDLIBS) -lpthread

$(BUILD)/mailspool.pc: scripts/mailspool.pc.in include/mailspool/version.h Makefile
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

# Three programs: the command (never set-id), the set-id helper (only the
# queue side: spool, envelope, configuration - no SMTP, TLS or DNS code is
# linked into it) and the delivery agent the daemon execs.
MAIN_SRC  = cmd/mailspool.c cmd/dkim.c cmd/queue.c cmd/front.c cmd/sendmail.c cmd/daemon.c cmd/setup.c \
            cmd/listing.c cmd/priv.c cmd/metrics_http.c
DROP_SRC  = cmd/drop.c cmd/listing.c cmd/priv.c
AGENT_SRC = cmd/agent.c cmd/listing.c
# sendmail and mailq without SMTP, TLS and DNS (light.c says why).
LIGHT_SRC = cmd/light.c cmd/front.c cmd/sendmail.c cmd/listing.c cmd/priv.c

# The main program alone serves the daemon's metrics over HTTP, with
# libmicrohttpd opened at run time (metrics_http.c says why): its soname,
# from the installed library, is compiled in.
MHD_SONAME := $(shell objdump -p $$(pkg-config --variable=libdir libmicrohttpd 2>/dev/null)/libmicrohttpd.so 2>/dev/null | sed -n 's/^ *SONAME *//p')
$(BUILD)/mailspool: $(MAIN_SRC) cmd/cli.h cmd/metrics_http.h $(BUILD)/libmailspool.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(if $(MHD_SONAME),-DMS_MHD_SONAME='"$(MHD_SONAME)"') -o $@ $(MAIN_SRC) \
		$(BUILD)/libmailspool.a $(LDLIBS) -ldl -lpthread

$(BUILD)/mailspool-drop: $(DROP_SRC) cmd/cli.h $(BUILD)/libmailspool.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $(DROP_SRC) $(BUILD)/libmailspool.a -lmd

$(BUILD)/mailspool-sendmail: $(LIGHT_SRC) cmd/cli.h $(BUILD)/libmailspool.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $(LIGHT_SRC) $(BUILD)/libmailspool.a -lmd

$(BUILD)/mailspool-deliver: $(AGENT_SRC) cmd/cli.h $(BUILD)/libmailspool.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $(AGENT_SRC) $(BUILD)/libmailspool.a $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c tests/unit/scripted.h tests/unit/tmpspool.h $(BUILD)/libmailspool.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests/unit -o $@ $< $(BUILD)/libmailspool.a $(LDLIBS) -lcmocka

$(BUILD)/bench/%: bench/%.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $<

# LD_PRELOAD fault injection for the crash tests (tests/crash/).
$(BUILD)/tests/faultinject.so: tests/crash/faultinject.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O2 -g -Wall -Wextra -fPIC -shared -o $@ $< -ldl

# Fuzz harnesses replayed over their stored corpus without libFuzzer.
$(BUILD)/fuzz/replay_%: fuzz/fuzz_%.c fuzz/standalone.c $(BUILD)/libmailspool.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ fuzz/fuzz_$*.c fuzz/standalone.c $(BUILD)/libmailspool.a $(LDLIBS)

fuzz-replay: $(REPLAY_BIN)
	@set -e; for f in $(FUZZERS); do $(BUILD)/fuzz/replay_$$f fuzz/corpus/$$f/*; done

# libFuzzer (clang): FUZZ_SECONDS per harness; new inputs join the corpus.
fuzz:
	@mkdir -p build-fuzz
	@set -e; for f in $(FUZZERS); do \
		clang $(CSTD) -g -O1 -fsanitize=fuzzer,address,undefined -Iinclude \
			-o build-fuzz/fuzz_$$f fuzz/fuzz_$$f.c $(LIB_SRC) $(LDLIBS); \
		build-fuzz/fuzz_$$f -max_total_time=$(FUZZ_SECONDS) -max_len=4096 fuzz/corpus/$$f; \
	done

deps:
	@sh scripts/ensure-deps

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

# The sanitizer build: a separate tree so objects never mix.
asan:
	$(MAKE) BUILD=build-asan EXTRA_CFLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all -Werror" CFLAGS="-O1 -g" all $(patsubst $(BUILD)/%,build-asan/%,$(UNIT_BIN)) $(patsubst $(BUILD)/%,build-asan/%,$(REPLAY_BIN))
	@set -e; for t in $(UNIT_SRC:tests/unit/%.c=build-asan/tests/%); do echo "== asan $$t"; \
		ASAN_OPTIONS=detect_leaks=1 $$t; done
	@set -e; for f in $(FUZZERS); do echo "== asan corpus $$f"; \
		ASAN_OPTIONS=detect_leaks=1 build-asan/fuzz/replay_$$f fuzz/corpus/$$f/*; done

integration: all $(BUILD)/tests/faultinject.so
	cd tests && MAILSPOOL_BIN=$(abspath $(BUILD)/mailspool) MS_FAULTINJECT=$(abspath $(BUILD)/tests/faultinject.so) \
		$(PYTHON) -m pytest -q -p no:cacheprovider integration hostile crash

# The program itself under ASan/UBSan with leak detection, against the
# same servers (the crash tests preload their own library: not with ASan).
integration-asan: asan
	cd tests && MAILSPOOL_BIN=$(abspath build-asan/mailspool) ASAN_OPTIONS=detect_leaks=1 \
		LSAN_OPTIONS=suppressions=$(abspath tests/lsan.supp):print_suppressions=0 \
		$(PYTHON) -m pytest -q -p no:cacheprovider integration hostile

check: deps
	$(MAKE) EXTRA_CFLAGS=-Werror all unit fuzz-replay
	$(MAKE) integration-asan
	$(MAKE) EXTRA_CFLAGS=-Werror integration

# Several hosts sharing one spool on a GlusterFS replica volume, mounted
# from network namespaces (tests/cluster/cluster.py): needs root.
check-cluster: deps all
	cd tests && MAILSPOOL_BIN=$(abspath $(BUILD)/mailspool) \
		$(PYTHON) -m pytest -q -p no:cacheprovider cluster

demo: deps all $(BENCH_BIN)
	@$(PYTHON) scripts/demo

bench: deps all $(BENCH_BIN)
	$(PYTHON) bench/run.py
	$(PYTHON) bench/bdat_bench.py
	$(PYTHON) bench/spool_bench.py
	$(PYTHON) bench/tls_bench.py
	$(PYTHON) bench/dkim_bench.py
	$(PYTHON) bench/daemon_bench.py
	$(PYTHON) bench/many_bench.py
	$(PYTHON) bench/million_bench.py
	$(PYTHON) bench/cluster_bench.py
	$(PYTHON) bench/cluster_bench.py --messages 900 --domains 150 --latency 1

# Programs with their modes: the command and the agent 0755, the helper
# 0755 until `mailspool setup` (run here when installing as root into the
# live system) makes it set-id mail_owner (6755); packagers with DESTDIR run
# setup from their post-install step.
install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include/mailspool \
		$(DESTDIR)$(PREFIX)/share/man/man1 $(DESTDIR)$(PREFIX)/share/man/man5 \
		$(DESTDIR)$(PREFIX)/share/man/man8 $(DESTDIR)$(PREFIX)/lib/mailspool \
		$(DESTDIR)$(LIBEXECDIR) $(DESTDIR)$(UNITDIR)
	install -m 755 $(BUILD)/mailspool $(DESTDIR)$(PREFIX)/bin/mailspool
	install -m 755 $(BUILD)/mailspool-deliver $(DESTDIR)$(LIBEXECDIR)/mailspool-deliver
	install -m 755 $(BUILD)/mailspool-drop $(DESTDIR)$(LIBEXECDIR)/mailspool-drop
	install -m 755 $(BUILD)/mailspool-sendmail $(DESTDIR)$(LIBEXECDIR)/mailspool-sendmail
	install -m 644 $(BUILD)/libmailspool.a $(DESTDIR)$(PREFIX)/lib/libmailspool.a
	install -m 755 $(BUILD)/libmailspool.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/
	ln -sf libmailspool.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(PREFIX)/lib/libmailspool.so
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 $(BUILD)/mailspool.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/mailspool.pc
	install -m 644 include/mailspool/*.h $(DESTDIR)$(PREFIX)/include/mailspool/
	install -m 644 man/mailspool.1 $(DESTDIR)$(PREFIX)/share/man/man1/mailspool.1
	install -m 644 man/mailspool.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/mailspool.conf.5
	install -m 644 man/sendmail.8 $(DESTDIR)$(PREFIX)/share/man/man8/mailspool-sendmail.8
	sed 's|@BINDIR@|$(PREFIX)/bin|g' scripts/mailspool.service.in > $(DESTDIR)$(UNITDIR)/mailspool.service
	chmod 644 $(DESTDIR)$(UNITDIR)/mailspool.service
	# sendmail and mailq names, to be linked from /usr/sbin by the administrator
	ln -sf $(LIBEXECDIR)/mailspool-sendmail $(DESTDIR)$(PREFIX)/lib/mailspool/sendmail
	ln -sf $(LIBEXECDIR)/mailspool-sendmail $(DESTDIR)$(PREFIX)/lib/mailspool/mailq
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ]; then \
		$(PREFIX)/bin/mailspool setup; \
	else \
		echo "now run, as root: $(PREFIX)/bin/mailspool setup"; \
	fi

clean:
	rm -rf build build-asan build-fuzz

-include $(LIB_OBJ:.o=.d)
