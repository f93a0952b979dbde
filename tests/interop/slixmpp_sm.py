"""XEP-0198 with slixmpp's own stream-management plugin against a Rookery node.

Usage: slixmpp_sm.py HOST PORT DOMAIN PASSWORD
alice logs in with xep_0198 (resumption on), bob without. bob sends alice a message; then
alice's TCP connection is cut without a closing tag (as when a phone changes network),
bob sends two more, and alice reconnects: slixmpp resumes the session and must receive the
two messages exactly once, with no new session. Prints "resume: ok"; exits non-zero with a
message on the first failure.
"""

import asyncio
import ssl
import sys

import slixmpp

HOST, PORT, DOMAIN, PASSWORD = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, sm):
        super().__init__(jid, PASSWORD)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.register_plugin("xep_0199")
        if sm:
            self.register_plugin("xep_0198")
        self.inbox = asyncio.Queue()
        self.add_event_handler("message", lambda m: self.inbox.put_nowait(m["body"]))
        self.starts = 0
        self.add_event_handler("session_start", self.count_start)

    def count_start(self, _):
        self.starts += 1


async def drain(q, wait):
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(q.get(), wait))
        except asyncio.TimeoutError:
            return got


async def main():
    alice = Client(f"alice@{DOMAIN}/slix", True)
    bob = Client(f"bob@{DOMAIN}/slix", False)
    for c in (alice, bob):
        c.connect(host=HOST, port=PORT)
    await asyncio.wait_for(
        asyncio.gather(alice.wait_until("session_start"), bob.wait_until("session_start")), 15
    )
    sm = alice.plugin["xep_0198"]
    # <enabled/> may have come with the session start already: poll for its id.
    for _ in range(200):
        if sm.sm_id:
            break
        await asyncio.sleep(0.05)
    else:
        raise SystemExit("resume: the server gave no session id")
    to = f"alice@{DOMAIN}/slix"
    bob.send_message(mto=to, mbody="before", mtype="chat")
    if await drain(alice.inbox, 2) != ["before"]:
        raise SystemExit("resume: first message missing")
    # Cut the connection under slixmpp's feet: no </stream:stream>, no unavailable.
    alice.transport.abort()
    await asyncio.sleep(0.5)
    for body in ("during-1", "during-2"):
        bob.send_message(mto=to, mbody=body, mtype="chat")
    await bob.plugin["xep_0199"].ping(jid=DOMAIN, timeout=5)
    alice.connect(host=HOST, port=PORT)
    await asyncio.wait_for(alice.wait_until("session_resumed"), 15)
    got = await drain(alice.inbox, 2)
    if got != ["during-1", "during-2"]:
        raise SystemExit(f"resume: expected the two messages once each, got {got!r}")
    if alice.starts != 1:
        raise SystemExit(f"resume: a new session was started ({alice.starts} session starts)")
    print("resume: ok")
    await alice.disconnect()
    await bob.disconnect()


asyncio.run(main())
