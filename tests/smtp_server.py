"""A tiny SMTP server on loopback for the tests (stdlib only): it speaks enough SMTP for
`smtplib` (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; no TLS, no AUTH) and keeps
every message it accepts."""

from __future__ import annotations

import contextlib
import email
import socketserver
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message


@dataclass
class Received:
    mail_from: str
    rcpt_to: list[str]
    message: Message


@dataclass
class SmtpServer:
    host: str
    port: int
    messages: list[Received] = field(default_factory=list)


class _Handler(socketserver.StreamRequestHandler):
    def _reply(self, line: str) -> None:
        self.wfile.write(f"{line}\r\n".encode())

    def handle(self) -> None:
        store: SmtpServer = self.server.store  # type: ignore[attr-defined]
        self._reply("220 localhost test SMTP")
        mail_from, rcpt = "", []
        while line := self.rfile.readline():
            verb = line.decode(errors="replace").strip().split(" ", 1)[0].upper()
            arg = line.decode(errors="replace").strip()[len(verb) :].strip()
            if verb in ("EHLO", "HELO"):
                self._reply("250 localhost")
            elif verb == "MAIL":
                mail_from, rcpt = arg.partition(":")[2].strip("<> "), []
                self._reply("250 OK")
            elif verb == "RCPT":
                rcpt.append(arg.partition(":")[2].strip("<> "))
                self._reply("250 OK")
            elif verb == "DATA":
                self._reply("354 end with <CRLF>.<CRLF>")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk[1:] if chunk.startswith(b"..") else chunk
                store.messages.append(Received(mail_from, rcpt, email.message_from_bytes(data)))
                self._reply("250 OK queued")
            elif verb in ("RSET", "NOOP"):
                self._reply("250 OK")
            elif verb == "QUIT":
                self._reply("221 bye")
                return
            else:
                self._reply("502 not implemented")


@contextlib.contextmanager
def smtp_server() -> Iterator[SmtpServer]:
    """Start the server on a free loopback port; yield where it is and what it got."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    store = SmtpServer("127.0.0.1", server.server_address[1])
    server.store = store  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield store
    finally:
        server.shutdown()
        server.server_close()
