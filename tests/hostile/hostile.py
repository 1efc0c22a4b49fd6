"""A scripted misbehaving SMTP or QMTP server, for behaviour no real server
shows on demand (PROTOCOL-RULES H2-H8, H12).  Each test file gives it one
script: a function that receives a Conn and misbehaves.  Loopback only."""
import socket
import threading


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.received = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def readline(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.received += chunk
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line + b"\n"

    def expect(self, prefix):
        line = self.readline()
        assert line.upper().startswith(prefix.encode()), line
        return line

    def read_data(self):
        """Read message data up to and including the '.' line."""
        lines = []
        while True:
            line = self.readline()
            if line in (b".\r\n", b""):
                return b"".join(lines)
            lines.append(line)

    def read_chunk(self, n):
        """Read the n octets of a BDAT chunk."""
        self._fill(n)
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def accept_envelope(self, rcpts=1):
        """Read MAIL, RCPT x rcpts and DATA (one pipelined group) and accept
        them all: 250, 250..., 354."""
        self.expect("MAIL")
        for _ in range(rcpts):
            self.expect("RCPT")
        self.expect("DATA")
        self.send("250 2.1.0 ok\r\n" + "250 2.1.5 ok\r\n" * rcpts + "354 go\r\n")

    def one_message(self, dot_reply):
        """Accept one pipelined message, answer its final dot with
        `dot_reply`, and read what follows (QUIT)."""
        self.accept_envelope()
        self.read_data()
        self.send(dot_reply)
        self.readline()

    def serve(self, on_rcpt=lambda line: "250 2.1.5 ok\r\n", on_dot=lambda: "250 2.0.0 ok\r\n",
              mail_reply="250 2.1.0 ok\r\n"):
        """Answer commands one line at a time until QUIT or EOF; each reply
        is written (blocking) before the next command is read."""
        while True:
            line = self.readline()
            if not line:
                return
            cmd = line[:4].upper()
            if cmd == b"MAIL":
                self.send(mail_reply)
            elif cmd == b"RCPT":
                self.send(on_rcpt(line))
            elif cmd == b"DATA":
                self.send("354 go\r\n")
                self.read_data()
                self.send(on_dot())
            elif cmd == b"BDAT":
                self.read_chunk(int(line.split()[1]))
                self.send(on_dot())
            elif cmd == b"RSET":
                self.send("250 2.0.0 ok\r\n")
            elif cmd == b"QUIT":
                self.send("221 bye\r\n")
                return
            else:
                self.send("500 5.5.1 what?\r\n")

    def starttls(self, cert, key):
        """Switch to TLS, server side, after sending our 220."""
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.sock = ctx.wrap_socket(self.sock, server_side=True)
        self.buf = b""

    # ---- QMTP ----------------------------------------------------------

    def _fill(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("client closed")
            self.received += chunk
            self.buf += chunk

    def netstring(self):
        """Read one netstring from the client and return its payload."""
        while b":" not in self.buf:
            self._fill(len(self.buf) + 1)
        head, _ = self.buf.split(b":", 1)
        n = int(head)
        total = len(head) + 1 + n + 1
        self._fill(total)
        payload = self.buf[len(head) + 1:len(head) + 1 + n]
        assert self.buf[total - 1:total] == b",", "package netstring without ','"
        self.buf = self.buf[total:]
        return payload

    def package(self):
        """Read one QMTP package: (message with its encoding byte, sender,
        [recipients])."""
        msg = self.netstring()
        sender = self.netstring()
        inner, rcpts = self.netstring(), []
        while inner:
            head, rest = inner.split(b":", 1)
            n = int(head)
            rcpts.append(rest[:n])
            inner = rest[n + 1:]
        return msg, sender, rcpts

    @staticmethod
    def ns(payload):
        if isinstance(payload, str):
            payload = payload.encode()
        return str(len(payload)).encode() + b":" + payload + b","

    def greet_ehlo(self, caps=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES")):
        self.send("220 hostile.test ESMTP\r\n")
        self.expect("EHLO")
        lines = ["hostile.test"] + list(caps)
        self.send("".join(f"250-{l}\r\n" for l in lines[:-1]) + f"250 {lines[-1]}\r\n")


class Hostile:
    """Serve `script(conn)` to each connection until closed."""

    def __init__(self, script, rcvbuf=None, sndbuf=None, scheme="smtp"):
        self.script = script
        self.scheme = scheme
        self.rcvbuf, self.sndbuf = rcvbuf, sndbuf
        self.errors = []
        self.conns = 0

    def __enter__(self):
        self.lsock = socket.socket()
        if self.rcvbuf:
            self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(5)
        self.port = self.lsock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def _serve(self):
        while True:
            try:
                s, _ = self.lsock.accept()
            except OSError:
                return
            self.conns += 1
            if self.sndbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            c = Conn(s)
            try:
                self.script(c)
            except (OSError, AssertionError, EOFError) as e:
                self.errors.append(e)
            finally:
                try:
                    s.close()
                except OSError:
                    pass

    def __exit__(self, *exc):
        self.lsock.close()

    def url(self, query=""):
        return f"{self.scheme}://127.0.0.1:{self.port}{query}"
