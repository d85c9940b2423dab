"""The real dataplane: owned host routes in the kernel, over one rtnetlink socket.

The stateful half: batching, retries, locking and which routes are ours. The bytes
(messages, dump parsing, error acks, the socket itself) are in :mod:`.wire`.

Memory: the dump is keyed by address for host routes (:func:`meshroute.core.model.
route_key`) and handed over as it is; the only state kept here is the *set* of
owned keys (:class:`.owned.OwnedKeys`: IPv4 hosts as bits of per-/24 masks), not a second
map of prefixes: at 100,000 routes a prefix-keyed copy cost ~50 MiB
(docs/performance.md). A batch's requests are made one chunk at a time, and the C
heap is trimmed after large work (:mod:`.heap`).
Routes come in the same way, by key (a host's address, or a prefix of any length:
a /32 or /128 given by a caller becomes its address), and are encoded from the key's
address and length; no prefix object is made unless a route fails.

Fast by construction (DESIGN.md targets: 10,000 routes within 2x ``ip -batch``; a
no-change resync of 20,000 routes within 150 ms):

- ``apply`` packs up to ``chunk`` RTM_NEWROUTE/RTM_DELROUTE messages into one
  datagram followed by an NLMSG_NOOP "barrier" that asks for an ack. The kernel handles
  a datagram's messages in order, so the barrier's ack means every earlier message was
  handled; successes send nothing (no NLM_F_ACK), failures send an error whose sequence
  number names the prefix. One bad route fails alone.
- ``dump`` asks with NETLINK_GET_STRICT_CHK for our protocol and table only, so the
  kernel sends nothing else; the wire parser reads just the attributes we need.

Invariants (DESIGN.md rule 4):

- Every message carries our protocol and table; deletes are matched by the kernel on
  both, so a foreign route is never deleted. The dump is also filtered by the parser, in
  case a kernel ignores the strict filter.
- A prefix we do not own yet is added with NLM_F_EXCL, never NLM_F_REPLACE: the kernel's
  replace ignores the protocol and would overwrite a hand-added route holding the same
  prefix and metric. Only prefixes seen in our own dump (or installed by us) are
  replaced; the EEXIST of a blocked add is reported for that prefix.
- Deletes go before replaces. Deleting a missing route (ESRCH) is success. A default
  route is refused. An owned route without a single gateway (device-only, multipath)
  is dumped with next hop 0.0.0.0 / ::, so a diff replaces or deletes it.
- Lost acknowledgements (ENOBUFS) never become silent success: the affected prefixes
  are checked against a fresh dump.
- Retries are narrow (tenacity): a dump interrupted by NLM_F_DUMP_INTR, ENOBUFS, EBUSY
  or EAGAIN is redone on a fresh socket; a send failing with ENOBUFS/EAGAIN is resent.
  Anything else raises OSError and the caller's next step is a full resync.
- Calls are serialised by a lock; meant for the one kernel worker thread (rule 10).

Size (above 300 lines): the stateful half of the kernel dataplane (batches, acks,
retries, ownership); the bytes are in wire.py already.
"""

from __future__ import annotations

import errno
import itertools
import logging
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from ipaddress import IPv4Network, IPv6Network

import tenacity

from meshroute.core.model import Address, Route, RouteKey, route_key, route_prefix
from meshroute.dataplane import heap, wire
from meshroute.dataplane.base import ApplyResult
from meshroute.dataplane.owned import OwnedKeys

log = logging.getLogger(__name__)


class NetlinkDataplane:
    """Owned routes (``protocol`` in ``table``) of one network namespace."""

    def __init__(
        self,
        table: int,
        protocol: int,
        netns: str | None = None,
        *,
        chunk: int = 1000,
        bufsize: int = 8 << 20,
        timeout: float = 10.0,
    ) -> None:
        if protocol in wire.RESERVED_PROTOCOLS or not 0 < protocol < 256:
            raise ValueError(f"route protocol {protocol} is reserved or out of 5..255")
        if not 0 < table < 2**32 or table in (253, 255):
            raise ValueError(f"route table {table} is reserved (default/local) or invalid")
        self.table, self.protocol, self.netns = table, protocol, netns
        self._chunk, self._bufsize, self._timeout = chunk, bufsize, timeout
        self._lock = threading.Lock()
        self._seq = 0
        self._owned: OwnedKeys | None = None  # as of the last dump and our changes
        self._encoder = wire.Encoder(table, protocol)
        self._parser = wire.DumpParser(protocol, table)
        self._retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(wire.TransientError),
            stop=tenacity.stop_after_attempt(5),
            wait=tenacity.wait_exponential(multiplier=0.005, max=0.2),
            before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
            reraise=True,
        )
        self._trimmer = heap.Trimmer()
        self._sock = self._open()

    # --- the Dataplane protocol ---------------------------------------------------

    def dump(self) -> Mapping[RouteKey, Address]:
        """Owned routes now in the kernel. A gateway-less one maps to 0.0.0.0 / ::."""
        with self._lock:
            routes = self._retrying(self._dump_once)
            self._owned = OwnedKeys(routes)
            self._trimmer.done(len(routes))
            return routes

    def apply(self, replace: Iterable[Route], delete: Iterable[RouteKey]) -> ApplyResult:
        """Deletes first, then replaces; chunked; failures reported per prefix.

        The requests of one chunk are made just before it is sent, so a first apply of
        100,000 routes never holds 100,000 request objects (docs/performance.md)."""
        with self._lock:
            started = time.perf_counter()
            if self._owned is None:
                self._owned = OwnedKeys(self._retrying(self._dump_once))
            result = ApplyResult()
            requests = self._requests(replace, delete, result)
            uncertain: list[wire.Request] = []
            sent = 0
            while chunk := list(itertools.islice(requests, self._chunk)):
                sent += len(chunk)
                uncertain += self._run_chunk(chunk, result)
            if uncertain:
                self._verify(uncertain, result)
            self._trimmer.done(sent)
            log.log(
                logging.INFO if sent >= 100 else logging.DEBUG,
                "apply: %d replaced, %d deleted, %d failed in %.1f ms (table %d, proto %d)",
                result.replaced,
                result.deleted,
                len(result.failed),
                (time.perf_counter() - started) * 1000,
                self.table,
                self.protocol,
            )
            return result

    def close(self) -> None:
        with self._lock:
            self._sock.close()

    def __enter__(self) -> NetlinkDataplane:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- socket -------------------------------------------------------------------

    def _open(self) -> socket.socket:
        return wire.open_socket(self.netns, self._bufsize, self._timeout)

    def _reset(self) -> None:
        """A fresh socket: no stale dump in progress, no late acks of an old batch."""
        self._sock.close()
        self._sock = self._open()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    # --- dump ---------------------------------------------------------------------

    def _dump_once(self) -> dict[RouteKey, Address]:
        routes: dict[RouteKey, Address] = {}
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                self._dump_family(family, routes)
        except OSError:
            self._reset()  # a dump may still be running on the old socket
            raise
        self._parser.forget_unless(routes)
        return routes

    def _dump_family(self, family: int, routes: dict[RouteKey, Address]) -> None:
        seq = self._next_seq()
        try:
            self._sock.send(wire.dump_request(family, seq, self.table, self.protocol))
            while not self._parser.feed(self._sock.recv(wire.RECV_SIZE), seq, routes):
                pass
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.EBUSY, errno.EAGAIN):
                raise wire.TransientError(f"dump: {wire.errno_text(exc.errno)}") from exc
            raise

    # --- apply --------------------------------------------------------------------

    def _requests(
        self, replace: Iterable[Route], delete: Iterable[RouteKey], result: ApplyResult
    ) -> Iterator[wire.Request]:
        """The batch's messages in order, deletes first. Whether an add is exclusive is
        decided when its request is made, from what is owned after the chunks before."""
        for key in delete:
            yield wire.Request(self._next_seq(), _as_key(key), None)
        latest = {_as_key(route.prefix): route.next_hop for route in replace}  # last wins
        owned = self._owned if self._owned is not None else OwnedKeys()
        for key, next_hop in latest.items():
            if isinstance(key, (IPv4Network, IPv6Network)) and key.prefixlen == 0:
                result.failed[key] = f"{key}: refusing a default route"
                continue
            yield wire.Request(self._next_seq(), key, next_hop, key not in owned)

    def _run_chunk(self, chunk: list[wire.Request], result: ApplyResult) -> list[wire.Request]:
        """Send one chunk, read its errors; return the requests whose outcome was lost."""
        barrier = self._next_seq()
        payload = b"".join(map(self._encoder.encode, chunk)) + wire.noop(barrier)
        try:
            self._retrying(self._send, payload)
            errors, lost = self._read_errors(barrier)
        except OSError:
            self._reset()  # a timeout leaves acks in flight; never read them as ours
            self._owned = None  # outcome unknown: the next apply dumps first
            raise
        uncertain = []
        for request in chunk:
            error = errors.get(request.seq)
            if error is None and lost:
                uncertain.append(request)
            else:
                self._settle(request, error, result)
        return uncertain

    def _send(self, payload: bytes) -> None:
        try:
            self._sock.send(payload)
        except OSError as exc:
            if exc.errno in (errno.ENOBUFS, errno.EAGAIN):
                raise wire.TransientError(f"send: {wire.errno_text(exc.errno)}") from exc
            raise

    def _read_errors(self, barrier: int) -> tuple[dict[int, tuple[int, str]], bool]:
        """Error acks by sequence number until ``barrier`` is acked; True if some were lost.

        The kernel handles a datagram inside send(), so every ack already sits in (or
        was dropped from) our queue. After ENOBUFS the queue is drained first; a new
        barrier is sent into the empty queue only if the old one was lost with the rest.
        """
        errors: dict[int, tuple[int, str]] = {}
        lost = False
        while True:
            try:
                data = self._sock.recv(wire.RECV_SIZE)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                lost = True
                if self._drain(barrier, errors):
                    return errors, lost
                barrier = self._next_seq()
                self._retrying(self._send, wire.noop(barrier))
                continue
            if wire.collect_errors(data, barrier, errors):
                return errors, lost

    def _drain(self, barrier: int, errors: dict[int, tuple[int, str]]) -> bool:
        """Read what is queued without waiting; True if the barrier's ack was there."""
        found = False
        self._sock.setblocking(False)
        try:
            while True:
                try:
                    data = self._sock.recv(wire.RECV_SIZE)
                except BlockingIOError:
                    return found
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    continue
                found = wire.collect_errors(data, barrier, errors) or found
        finally:
            self._sock.settimeout(self._timeout)

    def _settle(
        self, request: wire.Request, error: tuple[int, str] | None, result: ApplyResult
    ) -> None:
        assert self._owned is not None
        code, detail = error or (0, "")
        if request.next_hop is None and code in (0, errno.ESRCH):
            result.deleted += 1
            self._owned.discard(request.key)
        elif request.next_hop is not None and code == 0:
            result.replaced += 1
            self._owned.add(request.key)
        else:
            text = self._failure_text(request, code, detail)
            result.failed[route_prefix(request.key)] = text
            log.warning("route failed: %s", text)

    def _failure_text(self, request: wire.Request, code: int, detail: str) -> str:
        prefix = route_prefix(request.key)
        what = (
            f"delete {prefix}" if request.next_hop is None else f"{prefix} via {request.next_hop}"
        )
        text = f"{what}: {wire.errno_text(code)}"
        if detail:
            text += f"; kernel says: {detail}"
        if code == errno.EEXIST and request.exclusive:
            text += f"; a route not ours (as of the last dump) holds it in table {self.table}"
        return text

    def _verify(self, uncertain: list[wire.Request], result: ApplyResult) -> None:
        """Acks were lost (ENOBUFS): judge those requests by what the kernel now holds."""
        log.warning(
            "apply: %d acknowledgements lost (ENOBUFS), checking a fresh dump", len(uncertain)
        )
        routes = self._retrying(self._dump_once)
        self._owned = OwnedKeys(routes)
        for request in uncertain:
            now = routes.get(request.key)
            if now == request.next_hop:  # deleted: both None; replaced: same next hop
                result.deleted += request.next_hop is None
                result.replaced += request.next_hop is not None
            else:
                text = self._failure_text(request, errno.ENOBUFS, "outcome lost, kernel disagrees")
                result.failed[route_prefix(request.key)] = text
                log.warning("route failed: %s", text)


def _as_key(destination: RouteKey) -> RouteKey:
    """A route's key: a /32 or /128 prefix given by a caller becomes its address."""
    if isinstance(destination, (IPv4Network, IPv6Network)):
        return route_key(destination)
    return destination
