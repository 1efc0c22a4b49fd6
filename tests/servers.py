"""Real mail servers for the integration tests, each started on 127.0.0.1 on a
free port and stopped afterwards.

- SmtpSink: Postfix's smtp-sink, with its fault options and a dump file.
- Postfix: a throwaway Postfix instance (its own config, queue and log dirs)
  that rejects and defers chosen recipients, has a size limit, and HOLDs what
  it accepts so the tests can read its queue.
- Exim: Exim 4 from Debian's package (unpacked by scripts/install-deps),
  queue-only, with the same recipient rules.
- OpenSMTPD: from Debian's package (unpacked likewise); it does not offer
  PIPELINING.  Its spool path is compiled in (/var/spool/smtpd).
- Aiosmtpd: an in-process aiosmtpd server that keeps every envelope and the
  exact bytes of every message, in arrival order, and counts connections.
- Mailfront: mailfront's QMTP front end under tcpserver (ucspi-tcp), with
  its queuedir backend (every message kept as a file: sender, recipients,
  data) or its echo backend, and optional plugins that refuse.

- Dnsmasq: dnsmasq as the test domains' DNS server (MX, A, CNAME, null MX),
  authoritative for .test, on a free port of 127.0.0.1.

Only loopback addresses are used.
"""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

TESTMTA = os.environ.get("MS_TESTMTA", "/opt/mailspool-testmta")
EXIM = os.path.join(TESTMTA, "exim/usr/sbin/exim4")
OPENSMTPD = os.path.join(TESTMTA, "opensmtpd/usr/sbin/smtpd")

# Recipients the Postfix, Exim and OpenSMTPD instances treat specially.
REJECT = "reject@example.test"
LATER = "later@example.test"
SIZE_LIMIT = 20000


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reserved_port():
    """A free port below the kernel's ephemeral range, for a server that is
    configured long before it listens (a port from free_port() can be
    handed out again meanwhile - to another server, or as the local port
    of an outgoing connection)."""
    import random
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(10000, max(10001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    return free_port()


def wait_port(port, proc=None, timeout=15.0, greeting=True, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError):
            with socket.create_connection((host, port), timeout=0.5) as s:
                # Wait for the greeting so the server is really up (QMTP
                # has none: a connection is enough).
                if greeting:
                    s.settimeout(5)
                    s.recv(1)
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Daemon:
    """A server process in a private directory, listening on a free
    loopback port; stopped and cleaned up on exit."""

    def __init__(self, prefix, mode=0o700, host="127.0.0.1", port=None):
        self.dir = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.dir, mode)
        self.host = host
        self.port = port or free_port()

    def start(self, argv, env=None, greeting=True, stderr=subprocess.DEVNULL):
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        wait_port(self.port, self.proc, greeting=greeting, host=self.host)
        return self

    def __exit__(self, *exc):
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self):
        return f"smtp://127.0.0.1:{self.port}"


class SmtpSink(Daemon):
    """smtp-sink [options] 127.0.0.1:port; dump file of every transaction."""

    def __init__(self, *options, dump=True, host="127.0.0.1", port=None, greeting=True):
        super().__init__("ms-sink-", 0o777, host, port)  # smtp-sink writes as postfix
        self.want_dump = dump
        self.dump = os.path.join(self.dir, "dump")
        self.options = list(options)
        self.greeting = greeting

    def __enter__(self):
        return self.start(["smtp-sink", "-u", "postfix"] +
                          (["-D", self.dump] if self.want_dump else []) + self.options +
                          [f"{self.host}:{self.port}", "256"], greeting=self.greeting)

    def transactions(self):
        """The dump split into transactions (smtp-sink writes them in order)."""
        if not os.path.exists(self.dump):
            return []
        with open(self.dump, "rb") as f:
            data = f.read()
        parts = data.split(b"X-Client-Addr: ")
        return [b"X-Client-Addr: " + p for p in parts[1:]]


POSTFIX_MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
smtp unix - - n - - smtp
relay unix - - n - - smtp
tlsmgr unix - - n 1000? 1 tlsmgr
"""

POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydomain = postfix.test
mydestination =
relay_domains = example.test
smtpd_recipient_restrictions = check_recipient_access texthash:{d}/etc/rcpt_access,
    permit_auth_destination, reject
# Keep what was accepted in the hold queue, where the tests can read it.
smtpd_end_of_data_restrictions = check_client_access static:HOLD
message_size_limit = {size}
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
alias_maps =
alias_database =
smtpd_banner = $myhostname ESMTP throwaway
"""


class Postfix:
    """A throwaway Postfix instance listening on 127.0.0.1:port."""

    def __init__(self, extra_main="", tls=None, wrapper=False):
        """tls=(cert, key): offer STARTTLS on port; wrapper=True also
        listens on tls_port with TLS from the first byte (smtps)."""
        self.dir = tempfile.mkdtemp(prefix="ms-postfix-")
        os.chmod(self.dir, 0o755)  # the postfix user must reach data/
        self.port = free_port()
        self.tls_port = free_port()
        self.extra_main = extra_main
        if tls:
            self.extra_main += (f"smtpd_tls_cert_file = {tls[0]}\nsmtpd_tls_key_file = {tls[1]}\n"
                                "smtpd_tls_security_level = may\n"
                                "smtpd_tls_loglevel = 1\n")
        self.wrapper = wrapper

    def __enter__(self):
        d = self.dir
        for sub in ("etc", "queue", "data"):
            os.makedirs(os.path.join(d, sub))
        shutil.chown(os.path.join(d, "data"), "postfix")
        with open(os.path.join(d, "etc/main.cf"), "w") as f:
            f.write(POSTFIX_MAIN.format(d=d, size=SIZE_LIMIT) + self.extra_main)
        with open(os.path.join(d, "etc/master.cf"), "w") as f:
            f.write(POSTFIX_MASTER.format(port=self.port))
            if self.wrapper:
                f.write(f"127.0.0.1:{self.tls_port} inet n - n - - smtpd "
                        "-o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt\n")
        with open(os.path.join(d, "etc/rcpt_access"), "w") as f:
            f.write(f"{REJECT} REJECT 5.1.1 no such user\n"
                    f"{LATER} DEFER_IF_PERMIT 4.2.0 try later\n")
        self.conf = os.path.join(d, "etc")
        self.proc = subprocess.Popen(["postfix", "-c", self.conf, "start-fg"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(self.port, self.proc)
        except Exception:
            self.__exit__()
            log = open(os.path.join(d, "maillog")).read() if os.path.exists(
                os.path.join(d, "maillog")) else ""
            raise RuntimeError("postfix did not start:\n" + log)
        return self

    def __exit__(self, *exc):
        subprocess.run(["postfix", "-c", self.conf, "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self):
        return f"smtp://127.0.0.1:{self.port}"

    def queue(self):
        """Messages in the queue: postqueue -j, one dict each."""
        import json
        out = subprocess.run(["postqueue", "-c", self.conf, "-j"], capture_output=True,
                             check=True).stdout.decode()
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def body(self, queue_id):
        return subprocess.run(["postcat", "-c", self.conf, "-bh", "-q", queue_id],
                              capture_output=True, check=True).stdout


EXIM_CONF = """\
primary_hostname = exim.test
local_interfaces = 127.0.0.1
spool_directory = {d}/spool
log_file_path = {d}/log/%slog
pid_file_path = {d}/exim.pid
exim_user = Debian-exim
exim_group = Debian-exim
never_users =
host_lookup =
rfc1413_hosts =
message_size_limit = {size}
queue_only = true
smtp_accept_max = 0
keep_environment =
tls_advertise_hosts =
acl_smtp_rcpt = acl_rcpt
begin acl
acl_rcpt:
  deny local_parts = reject
       message = no such user
  defer local_parts = later
       message = try later
  accept
begin routers
begin transports
"""


EXIM_AUTH = """
begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${if and {{eq{$auth2}{@USER@}}{eq{$auth3}{@PASSWORD@}}}}
  server_set_id = $auth2
login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = Username:: : Password::
  server_condition = ${if and {{eq{$auth1}{@USER@}}{eq{$auth2}{@PASSWORD@}}}}
  server_set_id = $auth1
"""


class Exim(Daemon):
    """Exim 4, queue-only, on 127.0.0.1:port.  tls=(cert, key) offers
    STARTTLS; auth=(user, password) offers AUTH PLAIN and LOGIN (Exim's
    plaintext authenticator) - only inside TLS unless auth_in_clear."""

    def __init__(self, tls=None, auth=None, auth_in_clear=False, extra_main="", resolv=None,
                 extra_acl=""):
        """resolv: a resolv.conf for Exim's own DNS lookups (DKIM keys):
        bind-mounted over /etc/resolv.conf in a mount namespace of its
        own, so nothing else on the machine sees it."""
        super().__init__("ms-exim-", 0o755)  # Exim's own user must reach spool/
        self.tls, self.auth, self.auth_in_clear = tls, auth, auth_in_clear
        self.extra_main = extra_main
        self.resolv = resolv
        self.extra_acl = extra_acl

    def __enter__(self):
        d = self.dir
        os.makedirs(os.path.join(d, "spool"))
        os.makedirs(os.path.join(d, "log"))
        for sub in ("spool", "log"):
            shutil.chown(os.path.join(d, sub), "Debian-exim", "Debian-exim")
        self.conf = os.path.join(d, "exim.conf")
        conf = EXIM_CONF.format(d=d, size=SIZE_LIMIT)
        if self.extra_main:
            conf = conf.replace("begin acl\n", self.extra_main + "\nbegin acl\n", 1)
        if self.extra_acl:
            conf = conf.replace("begin acl\n", "begin acl\n" + self.extra_acl, 1)
        if self.tls:
            conf = conf.replace("tls_advertise_hosts =\n",
                                f"tls_advertise_hosts = *\ntls_certificate = {self.tls[0]}\n"
                                f"tls_privatekey = {self.tls[1]}\n")
        if self.auth:
            adv = "*" if self.auth_in_clear else "${if eq{$tls_in_cipher}{}{}{*}}"
            conf = conf.replace("acl_smtp_rcpt = acl_rcpt\n",
                                f"acl_smtp_rcpt = acl_rcpt\nauth_advertise_hosts = {adv}\n")
            conf += EXIM_AUTH.replace("@USER@", self.auth[0]).replace("@PASSWORD@", self.auth[1])
        with open(self.conf, "w") as f:
            f.write(conf)
        argv = [EXIM, "-C", self.conf, "-bdf", "-oX", str(self.port), "-odq"]
        if self.resolv:
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    'mount --bind "$0" /etc/resolv.conf && exec "$@"', self.resolv] + argv
        return self.start(argv)

    def mainlog(self):
        try:
            with open(os.path.join(self.dir, "log/mainlog")) as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def messages(self):
        """Data files of the queued messages, oldest first."""
        inp = os.path.join(self.dir, "spool/input")
        if not os.path.isdir(inp):
            return []
        names = sorted(n for n in os.listdir(inp) if n.endswith("-D"))
        out = []
        for n in names:
            with open(os.path.join(inp, n), "rb") as f:
                out.append(f.read())
        return out


OPENSMTPD_CONF = """\
smtp max-message-size {size}
table rej {{ "{reject}" }}
listen on 127.0.0.1 port {port} hostname opensmtpd.test
action "hold" relay host smtp://127.0.0.1:9
match from any for rcpt-to <rej> reject
match from any for any action "hold"
"""

OPENSMTPD_SPOOL = "/var/spool/smtpd"


class OpenSMTPD(Daemon):
    """OpenSMTPD on 127.0.0.1:port; accepted mail waits in its queue."""

    def __init__(self):
        super().__init__("ms-opensmtpd-")

    def __enter__(self):
        shutil.rmtree(OPENSMTPD_SPOOL, ignore_errors=True)
        conf = os.path.join(self.dir, "smtpd.conf")
        with open(conf, "w") as f:
            f.write(OPENSMTPD_CONF.format(size=SIZE_LIMIT, reject=REJECT, port=self.port))
        return self.start([OPENSMTPD, "-d", "-f", conf])

    def messages(self):
        q = os.path.join(OPENSMTPD_SPOOL, "queue")
        found = []
        for root, _dirs, files in os.walk(q):
            if "message" in files:
                with open(os.path.join(root, "message"), "rb") as f:
                    found.append(f.read())
        return found


class Aiosmtpd:
    """In-process aiosmtpd that records exact message bytes in order."""

    def __init__(self, auth_methods=None, host="127.0.0.1", port=None, rcpt_replies=None,
                 **kwargs):
        """auth_methods: {"SCRAM-SHA-256": async fn(server, args)} - SASL
        mechanisms aiosmtpd should offer, as its handler's auth_ hooks.
        rcpt_replies: {address: "550 5.1.1 ..."} - RCPT replies other than
        250 (a dict the test may change while the server runs)."""
        self.host = host
        self.port = port or free_port()
        self.rcpt_replies = rcpt_replies if rcpt_replies is not None else {}
        self.kwargs = kwargs
        self.auth_methods = auth_methods or {}
        self.envelopes = []
        self.sessions = 0
        self.lock = threading.Lock()

    def __enter__(self):
        from aiosmtpd.controller import Controller

        outer = self

        class Handler:
            async def handle_EHLO(self, server, session, envelope, hostname, responses):
                session.host_name = hostname
                with outer.lock:
                    outer.sessions += 1
                return responses

            async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
                reply = outer.rcpt_replies.get(address)
                if reply:
                    return reply
                envelope.rcpt_tos.append(address)
                return "250 2.1.5 OK"

            async def handle_DATA(self, server, session, envelope):
                with outer.lock:
                    outer.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos),
                                            bytes(envelope.original_content),
                                            list(envelope.mail_options)))
                return "250 2.0.0 stored"

        kw = dict(hostname=self.host, port=self.port, decode_data=False)
        kw.update(self.kwargs)
        handler = Handler()
        for name, fn in self.auth_methods.items():
            # aiosmtpd maps auth_X__Y to mechanism X-Y.
            setattr(handler, "auth_" + name.replace("-", "__"), fn)
        self.controller = Controller(handler, **kw)
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()

    def url(self):
        return f"smtp://{self.host}:{self.port}"


class Mailfront(Daemon):
    """mailfront 2.12's QMTP front end under tcpserver.

    backend "queuedir": every accepted message becomes a file in new/
    (sender NUL, each recipient NUL, then the data), read back by
    messages().  backend "echo": nothing is kept (the benchmark's peer).
    `plugins` come before the backend's own acceptance ("accept" takes any
    sender and recipient); `env` configures them (DATABYTES, REJECT, ...).
    mailfront answers once per package, not once per recipient."""

    def __init__(self, backend="queuedir", plugins=("accept",), env=None, log=False):
        super().__init__("ms-mailfront-")
        self.backend = backend
        self.plugins = list(plugins)
        self.extra_env = dict(env or {})
        self.log = os.path.join(self.dir, "log") if log else None

    def __enter__(self):
        qd = os.path.join(self.dir, "queue")
        for d in ("tmp", "new"):
            os.makedirs(os.path.join(qd, d))
        env = dict(os.environ, QUEUEDIR=qd, QUEUEDIR_NOSYNC="1", **self.extra_env)
        self.queue = os.path.join(qd, "new")
        argv = ["tcpserver", "-c", "200", "127.0.0.1", str(self.port), "/usr/sbin/mailfront",
                "qmtp", self.backend] + self.plugins
        err = open(self.log, "wb") if self.log else subprocess.DEVNULL
        return self.start(argv, env=env, greeting=False, stderr=err)

    def url(self, per_package=True):
        return f"qmtp://127.0.0.1:{self.port}" + ("?replies=package" if per_package else "")

    def messages(self, expect=None, timeout=5.0):
        """[(sender, [recipients], data)] in arrival order.  queuedir
        writes no terminator between the recipients and the data, so the
        data is what follows the last NUL (test data holds none)."""
        deadline = time.monotonic() + timeout
        while True:
            names = sorted(os.listdir(self.queue),
                           key=lambda n: tuple(int(x) for x in n.split(".")))
            if expect is None or len(names) >= expect or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        out = []
        for n in names:
            with open(os.path.join(self.queue, n), "rb") as f:
                fields = f.read().split(b"\0")
            out.append((fields[0].decode(), [r.decode() for r in fields[1:-1]], fields[-1]))
        return out


class Dnsmasq(Daemon):
    """dnsmasq answering for the .test domains only (NXDOMAIN for the rest
    of .test, nothing forwarded anywhere).  mx: [(domain, host, pref)],
    hosts: {name: address}; cname: {alias: target}; dead: [domain] - names
    sent to a server that never answers (a DNS timeout)."""

    def __init__(self, mx=(), hosts=None, cname=None, dead=(), txt=None, port=None):
        """txt: {name: [strings]} TXT records; port=53 for a resolver
        that programs which read resolv.conf can use."""
        super().__init__("ms-dns-", port=port)
        argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                f"--port={self.port}", "--listen-address=127.0.0.1",
                "--bind-interfaces", f"--pid-file={self.dir}/pid", "--user=root",
                "--local=/test/", "--log-facility=-"]
        for domain, host, pref in mx:
            argv.append(f"--mx-host={domain},{host},{pref}")
        for name, addr in (hosts or {}).items():
            argv.append(f"--host-record={name},{addr}")
        for alias, target in (cname or {}).items():
            argv.append(f"--cname={alias},{target}")
        for name, strings in (txt or {}).items():
            # (On the command line quotes are kept as data: strings go bare,
            # and so may hold no comma.)
            assert not any("," in t for t in strings), strings
            argv.append(f"--txt-record={name}," + ",".join(strings))
        # A DNS server that never answers: a port nothing listens on (UDP
        # packets to it vanish on loopback only with a firewall, so use a
        # socket that reads and never replies).
        self.blackhole = None
        if dead:
            self.blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.blackhole.bind(("127.0.0.1", 0))
            bport = self.blackhole.getsockname()[1]
            for d in dead:
                argv.append(f"--server=/{d}/127.0.0.1#{bport}")
        self.argv = argv

    def __enter__(self):
        return self.start(self.argv, greeting=False)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if self.blackhole:
            self.blackhole.close()

    def servers(self):
        return f"127.0.0.1:{self.port}"


NPM = os.path.join(TESTMTA, "npm/node_modules")
HARAKA = os.path.join(NPM, ".bin/haraka")

HARAKA_PLUGIN = r"""
// Accepts every recipient but reject@ (5xx) and later@ (4xx); keeps each
// message as a file: sender, recipients, then the data with CRLF.
const fs = require('fs');
const path = require('path');
let n = 0;
const addr = a => (a.user ? a.user + '@' + a.host : '');
exports.hook_rcpt = function (next, connection, params) {
    const a = addr(params[0]);
    if (a.startsWith('reject@')) return next(DENY, '5.1.1 no such user');
    if (a.startsWith('later@')) return next(DENYSOFT, '4.2.0 try later');
    next(OK);
};
exports.hook_queue = function (next, connection) {
    const t = connection.transaction;
    const name = path.join(process.env.RECORD_DIR,
                           String(Date.now()).padStart(15, '0') + '-' + String(++n).padStart(8, '0'));
    const ws = fs.createWriteStream(name + '.tmp');
    ws.write(addr(t.mail_from) + '\n' + t.rcpt_to.map(addr).join(' ') + '\n');
    t.message_stream.pipe(ws, { line_endings: '\r\n' });
    ws.on('finish', () => { fs.renameSync(name + '.tmp', name); next(OK); });
};
"""


class Recording(Daemon):
    """A server whose accepted messages land as files in self.out:
    messages() -> [(sender, [recipients], data)] in arrival order."""

    def messages(self, expect=None, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            names = sorted(n for n in os.listdir(self.out) if not n.endswith(".tmp"))
            if expect is None or len(names) >= expect or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        out = []
        for n in names:
            with open(os.path.join(self.out, n), "rb") as f:
                sender, rcpts, data = f.read().split(b"\n", 2)
            out.append((sender.decode(), rcpts.decode().split(), data))
        return out


class Haraka(Recording):
    """Haraka 3.3.4 (npm) with one plugin of our own that records what it
    accepts.  It offers PIPELINING but not CHUNKING, and answers commands
    written behind a message's final dot with "503 ... pipelined after end
    of DATA" (a deliberate anti-smuggling rule)."""

    def __init__(self):
        super().__init__("ms-haraka-")

    def __enter__(self):
        # Its own skeleton first (connection.ini and the rest it needs).
        os.rmdir(self.dir)
        subprocess.run([HARAKA, "-i", self.dir], check=True, capture_output=True)
        self.out = os.path.join(self.dir, "out")
        os.makedirs(self.out)
        files = {"plugins/record.js": HARAKA_PLUGIN, "config/plugins": "record\n",
                 "config/smtp.ini": f"[main]\nlisten=127.0.0.1:{self.port}\nnodes=0\n",
                 "config/me": "haraka.test\n", "config/log.ini": "[main]\nlevel=warn\n",
                 "package.json": '{"name": "haraka_test", "dependencies": {}}\n'}
        for name, text in files.items():
            with open(os.path.join(self.dir, name), "w") as f:
                f.write(text)
        env = dict(os.environ, RECORD_DIR=self.out)
        return self.start([HARAKA, "-c", self.dir], env=env)


class Chasquid(Recording):
    """chasquid 1.11 (Debian) for the local domain example.test (users b@,
    c@ ... as given), delivering through a script that keeps each message.
    It offers PIPELINING but never reads commands written behind a final
    dot."""

    def __init__(self, users=("b", "c", "d")):
        super().__init__("ms-chasquid-")
        self.users = users

    def __enter__(self):
        etc = os.path.join(self.dir, "etc")
        self.out = os.path.join(self.dir, "out")
        os.makedirs(self.out)
        cert = os.path.join(etc, "certs", "chasquid.test")
        os.makedirs(cert)
        os.makedirs(os.path.join(etc, "domains", "example.test"))
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        os.path.join(cert, "privkey.pem"), "-out",
                        os.path.join(cert, "fullchain.pem"), "-days", "2", "-subj",
                        "/CN=chasquid.test"], check=True, capture_output=True)
        for u in self.users:
            subprocess.run(["chasquid-util", f"--configdir={etc}", "user-add",
                            f"{u}@example.test", "--password=secret123"], check=True,
                           capture_output=True)
        mda = os.path.join(self.dir, "mda")
        with open(mda, "w") as f:
            f.write("#!/bin/sh\n# sender, recipient, then the data (LF from chasquid)\n"
                    f"f={self.out}/$(date +%s%N)-$$\n"
                    "{ printf '%s\\n%s\\n' \"$1\" \"$2\"; cat; } > $f.tmp && mv $f.tmp $f\n")
        os.chmod(mda, 0o755)
        p = self.port
        with open(os.path.join(etc, "chasquid.conf"), "w") as f:
            f.write(f'hostname: "chasquid.test"\nsmtp_address: "127.0.0.1:{p}"\n'
                    f'submission_address: "127.0.0.1:{free_port()}"\n'
                    f'submission_over_tls_address: "127.0.0.1:{free_port()}"\n'
                    f'data_dir: "{self.dir}/data"\nmail_delivery_agent_bin: "{mda}"\n'
                    'mail_delivery_agent_args: "%from%"\nmail_delivery_agent_args: "%to%"\n'
                    f'mail_log_path: "{self.dir}/mail.log"\n')
        return self.start(["chasquid", "-config_dir", etc])


DOVECOT_CONF = """\
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/log
protocols = submission
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
hostname = dovecot.test
mail_location = maildir:{d}/mail/%u
passdb {{
  driver = static
  args = password={password}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={d}/home
}}
service submission-login {{
  chroot =
  inet_listener submission {{
    address = 127.0.0.1
    port = {port}
  }}
}}
service anvil {{
  chroot =
}}
submission_relay_host = 127.0.0.1
submission_relay_port = {relay_port}
submission_relay_trusted = yes
"""


class DovecotSubmission(Daemon):
    """Dovecot 2.3 submission service (dovecot-submissiond) relaying to
    relay_port; any user, password `password`.  It offers CHUNKING and
    PIPELINING whatever the backend offers."""

    password = "secret"

    def __init__(self, relay_port):
        super().__init__("ms-dovecot-", mode=0o755)
        self.relay_port = relay_port

    def __enter__(self):
        for sub in ("home", "mail"):
            os.makedirs(os.path.join(self.dir, sub))
            os.chmod(os.path.join(self.dir, sub), 0o777)
        self.conf = os.path.join(self.dir, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(DOVECOT_CONF.format(d=self.dir, password=self.password, port=self.port,
                                        relay_port=self.relay_port))
        return self.start(["dovecot", "-F", "-c", self.conf])

    def log(self):
        with open(os.path.join(self.dir, "log"), errors="replace") as f:
            return f.read()
