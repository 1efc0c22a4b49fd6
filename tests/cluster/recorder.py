#!/usr/bin/python3
"""A recording SMTP receiver for the cluster tests (aiosmtpd), started
inside the test's server namespace.  It appends one line per event to an
events file, flushed at once, so the test reads what happened so far:

    ready                       listening
    open PEER N                 a connection opened: N are open now
    close PEER N                one closed: N are still open
    msg SEQ NRCPT PEER          a message accepted (SEQ: its X-Seq field)

--delay S: each DATA is answered S seconds late (a slow receiver).
--down: every connection is closed at once, before any greeting (a
destination that is not taking mail), after an "open" line.
"""
import argparse
import asyncio
import re
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

ap = argparse.ArgumentParser()
ap.add_argument("--host", required=True)
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--events", required=True)
ap.add_argument("--down", action="store_true")
ap.add_argument("--delay", type=float, default=0.0, help="seconds before each DATA reply")
args = ap.parse_args()

lock = threading.Lock()
out = open(args.events, "a", buffering=1)
state = {"open": 0}


def event(line):
    with lock:
        out.write(line + "\n")


def opened(peer):
    with lock:
        state["open"] += 1
        out.write(f"open {peer} {state['open']}\n")


def closed(peer):
    with lock:
        state["open"] -= 1
        out.write(f"close {peer} {state['open']}\n")


class Handler:
    async def handle_DATA(self, server, session, envelope):
        m = re.search(rb"X-Seq: (\d+)", envelope.original_content or b"")
        if args.delay:
            await asyncio.sleep(args.delay)
        event(f"msg {m.group(1).decode() if m else '-'} {len(envelope.rcpt_tos)} "
              f"{session.peer[0]}")
        return "250 2.0.0 kept"


class CountingSMTP(SMTP):
    def connection_made(self, transport):
        self._peer_ip = transport.get_extra_info("peername")[0]
        opened(self._peer_ip)
        super().connection_made(transport)

    def connection_lost(self, exc):
        closed(self._peer_ip)
        super().connection_lost(exc)


class CountingController(Controller):
    def factory(self):
        return CountingSMTP(self.handler, decode_data=False, enable_SMTPUTF8=True,
                            data_size_limit=None)


async def down(reader, writer):
    peer = writer.get_extra_info("peername")[0]
    opened(peer)
    writer.close()
    closed(peer)


if args.down:
    async def main():
        server = await asyncio.start_server(down, args.host, args.port)
        event("ready")
        async with server:
            await server.serve_forever()
    asyncio.run(main())
else:
    c = CountingController(Handler(), hostname=args.host, port=args.port, ready_timeout=10)
    c.start()
    event("ready")
    threading.Event().wait()
