"""Drives a Rookery node with slixmpp, an independent Python XMPP library.

Usage: slixmpp_chat.py HOST PORT DOMAIN PASSWORD
For each SASL mechanism (and once with slixmpp's own choice) alice and bob log in over
STARTTLS, bob sends presence, alice sends bob a chat message, and bob must receive it
from alice's full JID. Exits non-zero with a message on the first failure.
"""

import asyncio
import ssl
import sys

import slixmpp

HOST, PORT, DOMAIN, PASSWORD = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, mech):
        super().__init__(jid, PASSWORD, sasl_mech=mech)
        # The test node uses a self-signed certificate.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.register_plugin("xep_0199")
        self.inbox = asyncio.Queue()
        self.add_event_handler("message", self.inbox.put_nowait)
        self.add_event_handler("failed_auth", lambda *_: self.inbox.put_nowait("failed_auth"))


async def exchange(mech):
    alice = Client(f"alice@{DOMAIN}/slix", mech)
    bob = Client(f"bob@{DOMAIN}/slix", mech)
    for c in (alice, bob):
        c.connect(host=HOST, port=PORT)
    await asyncio.wait_for(
        asyncio.gather(alice.wait_until("session_start"), bob.wait_until("session_start")), 15
    )
    bob.send_presence()
    # The presence must be processed before the message so it goes to this resource.
    # The server handles one client's stanzas in order, so the answer to this ping
    # means the presence was processed.
    await bob.plugin["xep_0199"].ping(jid=DOMAIN, timeout=5)
    body = f"hello over {mech or 'default'}"
    alice.send_message(mto=f"bob@{DOMAIN}", mbody=body, mtype="chat")
    msg = await asyncio.wait_for(bob.inbox.get(), 10)
    if msg == "failed_auth" or msg["body"] != body or str(msg["from"]) != f"alice@{DOMAIN}/slix":
        raise SystemExit(f"{mech}: unexpected {msg!r}")
    print(f"{mech or 'default'}: ok")
    await alice.disconnect()
    await bob.disconnect()


async def main():
    for mech in ["SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", None]:
        await exchange(mech)


asyncio.run(main())
