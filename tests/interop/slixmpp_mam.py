"""Message archive (XEP-0313) through slixmpp, an independent Python XMPP library.

Usage:
  slixmpp_mam.py chat   HOST PORT DOMAIN PASSWORD STATE_FILE
  slixmpp_mam.py verify HOST PORT DOMAIN PASSWORD STATE_FILE

`chat`: alice and bob log in over STARTTLS and exchange 30 + 25 interleaved chat
messages. Every message bob receives must carry exactly one XEP-0359 stanza-id stamped
by bob's bare JID. Then both page through their archives with slixmpp's RSM iterator
(pages of 10, forwards and backwards) and with a `with` filter, and check: every
message is there once, in the order it was sent, both directions, and the stanza-ids
bob saw live are the archive ids of his copies. The archive (ids and bodies, per user)
is written to STATE_FILE.
`verify`: after a server restart, both page through their archives again and must get
exactly what STATE_FILE holds.
Exits non-zero with a message on the first failure; prints "<step>: ok" lines.
"""

import asyncio
import json
import ssl
import sys

import slixmpp

MODE, HOST, PORT, DOMAIN, PASSWORD, STATE = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]
ALICE, BOB = f"alice@{DOMAIN}", f"bob@{DOMAIN}"
SID = "{urn:xmpp:sid:0}stanza-id"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid):
        super().__init__(jid, PASSWORD)
        # The test node uses a self-signed certificate.
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        for p in ("xep_0199", "xep_0059", "xep_0313", "xep_0359"):
            self.register_plugin(p)
        self.inbox = asyncio.Queue()
        self.add_event_handler("message", self.inbox.put_nowait)


def fail(msg):
    raise SystemExit(msg)


async def login(local):
    c = Client(f"{local}@{DOMAIN}/mam")
    c.connect(host=HOST, port=PORT)
    await asyncio.wait_for(c.wait_until("session_start"), 15)
    c.send_presence()
    await c.plugin["xep_0199"].ping(jid=DOMAIN, timeout=5)
    return c


def entry(msg):
    """(archive id, from bare, to bare, body) of one MAM result."""
    result = msg["mam_result"]
    fwd = result["forwarded"]["stanza"]
    return result["id"], str(fwd["from"].bare), str(fwd["to"].bare), fwd["body"]


async def archive(c, **kw):
    return [entry(m) async for m in c.plugin["xep_0313"].iterate(rsm={"max": 10}, **kw)]


async def archive_backwards(c):
    """Pages from the newest message back (RSM `<before/>`), newest first. slixmpp's own
    reverse iterator stops after the first page whenever the server sends `count` and
    `first index` (it applies its forward-paging end test), so only the first page comes
    from it and the rest are explicit `before` queries."""
    out = []
    async for m in c.plugin["xep_0313"].iterate(rsm={"max": 10}, reverse=True, total=10):
        out.append(entry(m))
    while out:
        page = await c.plugin["xep_0313"].retrieve(rsm={"max": 10, "before": out[-1][0]})
        items = [entry(m) for m in page["mam"]["results"]]
        out.extend(reversed(items))
        if page["mam_fin"]["complete"] in ("true", "1") or not items:
            break
    return out


async def check_archive(c, me, expected_bodies):
    fwd = await archive(c)
    bodies = [e[3] for e in fwd]
    if bodies != expected_bodies:
        fail(f"{me}: forward paging gave {bodies}, expected {expected_bodies}")
    ids = [e[0] for e in fwd]
    if len(set(ids)) != len(ids):
        fail(f"{me}: duplicate archive ids {ids}")
    back = await archive_backwards(c)
    if [e[0] for e in back] != list(reversed(ids)):
        fail(f"{me}: backward paging differs from forward paging reversed: {[e[3] for e in back]}")
    other = BOB if me == ALICE else ALICE
    with_other = await archive(c, with_jid=slixmpp.JID(other))
    if [e[0] for e in with_other] != ids:
        fail(f"{me}: 'with' filter on {other} lost or added messages")
    with_stranger = await archive(c, with_jid=slixmpp.JID(f"carol@{DOMAIN}"))
    if with_stranger:
        fail(f"{me}: 'with' filter on a stranger returned {with_stranger}")
    for _id, frm, to, _body in fwd:
        if {frm, to} != {ALICE, BOB}:
            fail(f"{me}: archived message between {frm} and {to}")
    return fwd


async def chat():
    alice, bob = await login("alice"), await login("bob")
    sent = []
    # Each ping is answered after the server routed (and archived) the sender's message
    # before it, since it handles one client's stanzas in order: that makes the archive
    # order of the two users' messages deterministic.
    for i in range(30):
        body = f"alice to bob {i}"
        alice.send_message(mto=BOB, mbody=body, mtype="chat")
        sent.append(body)
        await alice.plugin["xep_0199"].ping(jid=DOMAIN, timeout=5)
        if i < 25:
            body = f"bob to alice {i}"
            bob.send_message(mto=ALICE, mbody=body, mtype="chat")
            sent.append(body)
            await bob.plugin["xep_0199"].ping(jid=DOMAIN, timeout=5)
    live_ids = []
    for _ in range(30):
        msg = await asyncio.wait_for(bob.inbox.get(), 10)
        sids = msg.xml.findall(SID)
        if len(sids) != 1 or sids[0].get("by") != BOB:
            fail(f"bob: live message without exactly one stanza-id by {BOB}: {msg}")
        live_ids.append(sids[0].get("id"))
    print("live stanza-ids: ok")
    state = {}
    for c, me in ((alice, ALICE), (bob, BOB)):
        fwd = await check_archive(c, me, sent)
        state[me] = fwd
        print(f"{me} archive paging: ok ({len(fwd)} messages)")
    bob_incoming = [e[0] for e in state[BOB] if e[1] == ALICE]
    if bob_incoming != live_ids:
        fail(f"bob: live stanza-ids {live_ids} are not the archive ids {bob_incoming}")
    print("stanza-ids match archive: ok")
    with open(STATE, "w") as f:
        json.dump(state, f)
    await alice.disconnect()
    await bob.disconnect()


async def verify():
    with open(STATE) as f:
        state = json.load(f)
    alice, bob = await login("alice"), await login("bob")
    for c, me in ((alice, ALICE), (bob, BOB)):
        before = [tuple(e) for e in state[me]]
        after = await check_archive(c, me, [e[3] for e in before])
        if after != before:
            fail(f"{me}: archive changed across the restart")
        print(f"{me} archive after restart: ok")
    await alice.disconnect()
    await bob.disconnect()


asyncio.run(chat() if MODE == "chat" else verify())
