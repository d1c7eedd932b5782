# SPDX-License-Identifier: Apache-2.0
"""SIP2 (3M Standard Interchange Protocol 2.00): cardd's client to the library system.

* :mod:`~cardd.kiosk.sip2.messages`: framing, AY/AZ checksums, building and parsing messages
  (pure, no I/O);
* :mod:`~cardd.kiosk.sip2.client`: :class:`~cardd.kiosk.sip2.client.Sip2Client`, an asyncio
  :class:`~cardd.kiosk.patron.PatronSource` (login, status, keep-alive, resends, reconnects,
  TLS);
* :mod:`~cardd.kiosk.sip2.config`: the ``[kiosk.sip2]`` table.

Why our own client, not a library: kiosk.md §2 (blocking sockets, checksums never verified,
hangs on Koha's CRLF, self-signed TLS accepted by default).

Servers to test against
-----------------------

Our own test ACS, :mod:`cardd.sim.sip2_server`, carries every fault test (wrong checksums once
or always, 96, CRLF replies, slow replies, dropped connections, refused logins, restarts, TLS,
checksums over code points). To check our reading of the protocol against someone else's, the
client also runs against a SIP2 server the project did not write. What was evaluated (2026-11):

* **PyPI ``pysip2`` 0.1.0** (MIT, ftsartek/pysip2; msgspec + AnyIO): an ACS-side library with
  typed messages and a TCP server. *Used* (test extra; :mod:`cardd.sim.sip2_reference`). Read
  in full and run: its checksums are summed over the encoded bytes and agree with ours on ASCII,
  UTF-8 (Chinese names) and cp850 (``Zoë Müller``); it echoes AY, answers a bad checksum with
  96, replays its last reply on 97, gates on login (940, then closes) and lists its routes in
  BX. Tests: login accepted and refused, 63 and 23 lookups (valid, lost card with AF, fines,
  unknown-patron shape), 35, keep-alive, twelve requests so AY wraps, cp850. Its limits,
  verified, and why the fault tests use our own server:

  - it frames on CR only and keeps an LF: a client ending messages with CRLF (our
    ``terminator = "CRLF"``) has every later message seen as ``\\n99...``, whose checksum then
    fails; it 96s until our client gives up (checked by hand: "server asked for a resend 3
    times"). Koha and Evergreen strip the LF. Our client sends CR by default;
  - it always replies with CR, so Koha's CRLF default is only exercised against our server;
  - no ``&#124;`` escaping: values holding ``|`` are refused when it encodes;
  - no fault injection and no TLS listener;
  - it replays its cached reply for a request whose AY and AZ equal the previous one's: a
    client must advance AY for every new request (ours does, and resends identical bytes only
    after a 96, which is what that replay is for). The benchmark cycles ten pre-encoded frames
    for the same reason.

* **PyPI ``invenio-sip2`` 1.0.1**: a SIP2 server as a module of the Invenio framework; needs an
  Invenio application, its database and search services. Not installed: far too heavy for a
  test, and not a standalone server.
* **Koha** (``C4/SIP``) and **Evergreen** ``SIPServer``: the servers libraries really run; Perl,
  not packaged in Debian 12 (``apt-cache search`` finds no SIP2 server), and each needs its ILS
  and database. No container images can be fetched here. Their behaviour that matters (CRLF by
  default, stray LFs stripped, code-point checksums in older Koha, the unknown-patron shape) is
  reproduced by our test server's faults instead.
* PyPI ``sip2`` 1.1 and ``berick/pysip2`` (not the PyPI package): clients, not servers.
"""
