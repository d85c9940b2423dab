"""The wire codec: round trips, strict validation, identity, fuzzing, the digest."""

from __future__ import annotations

import ipaddress
import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshroute.core.codec import (
    MAX_BODY_BYTES,
    CodecError,
    decode,
    encode,
)
from meshroute.core.model import (
    ClaimRecord,
    Delta,
    Goodbye,
    Header,
    Heartbeat,
    Snapshot,
    SyncRequest,
)

# --- strategies ---------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", fullmatch=True)
ints = st.integers(min_value=0, max_value=2**63 - 1)
ipv4 = st.ip_addresses(v=4)
ipv6 = st.ip_addresses(v=6)
addresses = st.one_of(ipv4, ipv6)
common_names = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=255
).filter(lambda s: all(not 0x7F <= ord(c) <= 0x9F for c in s))


@st.composite
def records(draw, address=addresses):
    return ClaimRecord(draw(address), draw(common_names), draw(ints), draw(ints))


headers = st.builds(Header, origin=names, epoch=ints, seq=ints)


@st.composite
def snapshots(draw):
    claims = draw(st.lists(records(), max_size=8, unique_by=lambda r: r.address))
    return Snapshot(
        header=draw(headers),
        next_hop=draw(st.none() | ipv4),
        next_hop6=draw(st.none() | ipv6),
        claims=tuple(claims),
    )


@st.composite
def deltas(draw):
    address = draw(addresses)
    claim = draw(st.none() | records(address=st.just(address)))
    return Delta(header=draw(headers), address=address, claim=claim)


heartbeats = st.builds(
    Heartbeat,
    header=headers,
    next_hop=st.none() | ipv4,
    next_hop6=st.none() | ipv6,
    state_seq=ints,
    count=ints,
    digest=st.from_regex(r"[0-9a-f]{16}", fullmatch=True),
)
sync_requests = st.builds(SyncRequest, header=headers, target=st.none() | names)
goodbyes = st.builds(Goodbye, header=headers)
messages = st.one_of(snapshots(), deltas(), heartbeats, sync_requests, goodbyes)


def _hdr(origin: str = "a1") -> Header:
    return Header(origin=origin, epoch=1_700_000_000_000, seq=7)


def _valid_obj() -> dict:
    msg = Snapshot(
        header=_hdr(),
        next_hop=ipaddress.IPv4Address("10.8.0.1"),
        next_hop6=None,
        claims=(ClaimRecord(ipaddress.ip_address("10.8.0.6"), "client1", 1_700_000_000, 5),),
    )
    return json.loads(encode(msg))


def _body(obj: object) -> bytes:
    return json.dumps(obj).encode()


def _error(obj: object, user_id: str | None = "a1") -> str:
    with pytest.raises(CodecError) as info:
        decode(_body(obj), user_id=user_id)
    return str(info.value)


# --- round trips --------------------------------------------------------------------


@given(messages)
def test_round_trip(msg):
    assert decode(encode(msg), user_id=msg.header.origin) == msg


def test_wire_form_is_the_documented_one():
    msg = Delta(
        header=_hdr(),
        address=ipaddress.ip_address("10.8.0.6"),
        claim=ClaimRecord(ipaddress.ip_address("10.8.0.6"), "client1", 1700000000, 1700000000123),
    )
    assert json.loads(encode(msg)) == {
        "v": 1,
        "type": "delta",
        "origin": "a1",
        "epoch": 1_700_000_000_000,
        "seq": 7,
        "address": "10.8.0.6",
        "claim": {
            "address": "10.8.0.6",
            "cn": "client1",
            "since": 1700000000,
            "stamp": 1700000000123,
        },
    }


def test_unknown_top_level_and_claim_fields_are_ignored():
    obj = _valid_obj()
    obj["future"] = {"x": [1, 2]}
    obj["claims"][0]["future"] = True
    msg = decode(_body(obj), user_id="a1")
    assert isinstance(msg, Snapshot)
    assert msg.claims[0].common_name == "client1"


# --- identity -----------------------------------------------------------------------


def test_identity_missing_user_id_is_refused():
    assert "user_id" in _error(_valid_obj(), user_id=None)


def test_identity_other_user_is_refused():
    assert "differs from user_id 'a2'" in _error(_valid_obj(), user_id="a2")


# --- strict validation --------------------------------------------------------------


def _mutated(**changes):
    obj = _valid_obj()
    for key, value in changes.items():
        if value is KeyError:
            del obj[key]
        else:
            obj[key] = value
    return obj


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"v": KeyError}, "field 'v': missing"),
        ({"v": 2}, "unsupported version 2"),
        ({"v": 0}, "unsupported version 0"),
        ({"v": True}, "field 'v': expected an integer"),
        ({"v": 1.0}, "field 'v': expected an integer"),
        ({"type": "announce"}, "unknown message type 'announce'"),
        ({"type": KeyError}, "field 'type': missing"),
        ({"epoch": -1}, "field 'epoch'"),
        ({"epoch": True}, "field 'epoch': expected int, got bool"),
        ({"seq": 3.0}, "field 'seq': expected int, got float"),
        ({"seq": "3"}, "field 'seq': expected int, got str"),
        ({"seq": 2**63}, "field 'seq'"),
        ({"origin": "-bad"}, "field 'origin'"),
        ({"origin": "a" * 64}, "field 'origin'"),
        ({"origin": "a1\n"}, "field 'origin'"),
        ({"next_hop": "fd00::1"}, "not an IPv4 address"),
        ({"next_hop6": "10.0.0.1"}, "not an IPv6 address"),
        ({"next_hop": "10.0.0.1/32"}, "not a bare host address"),
        ({"next_hop": "10.0.0.300"}, "not an IP address"),
        ({"next_hop": KeyError}, "field 'next_hop': missing"),
        ({"claims": {}}, "field 'claims': expected list"),
    ],
)
def test_invalid_top_level_fields(changes, expected):
    assert expected in _error(_mutated(**changes))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"address": "10.8.0.6/32"}, "claims[0]: field 'address'"),
        ({"address": "fe80::1%eth0"}, "not a bare host address"),
        ({"address": " 10.8.0.6"}, "not a bare host address"),
        ({"address": 167772166}, "field 'address': expected str"),
        ({"cn": "x" * 256}, "field 'cn'"),
        ({"cn": "bad\x00cn"}, "control characters"),
        ({"cn": "bad\u0085cn"}, "control characters"),
        ({"cn": None}, "field 'cn': expected str"),
        ({"since": -5}, "field 'since'"),
        ({"stamp": False}, "field 'stamp': expected int, got bool"),
        ({"stamp": KeyError}, "field 'stamp': missing"),
    ],
)
def test_invalid_claims(changes, expected):
    obj = _valid_obj()
    for key, value in changes.items():
        if value is KeyError:
            del obj["claims"][0][key]
        else:
            obj["claims"][0][key] = value
    assert expected in _error(obj)


def test_duplicate_addresses_in_snapshot():
    obj = _valid_obj()
    obj["claims"].append(dict(obj["claims"][0], cn="other"))
    assert "duplicate address 10.8.0.6" in _error(obj)


def test_delta_claim_must_match_its_address():
    obj = {"v": 1, "type": "delta", "origin": "a1", "epoch": 1, "seq": 1, "address": "10.8.0.7"}
    obj["claim"] = {"address": "10.8.0.6", "cn": "c", "since": 1, "stamp": 1}
    assert "differs from field 'address'" in _error(obj)


def test_a_refused_claim_is_named_by_its_list_and_index_exactly():
    obj = _valid_obj()
    obj["claims"] = [dict(obj["claims"][0]), dict(obj["claims"][0], address="10.8.0.7"), 5]
    obj["claims"][1]["cn"] = None
    assert _error(obj) == "claims[1]: field 'cn': expected str, got NoneType"
    obj["claims"][1]["cn"] = "c"
    assert _error(obj) == "claims[2]: expected an object, got int"


def _delta_obj(address: object, claim_address: object) -> dict:
    obj = {"v": 1, "type": "delta", "origin": "a1", "epoch": 1, "seq": 1, "address": address}
    obj["claim"] = {"address": claim_address, "cn": "c", "since": 1, "stamp": 1}
    return obj


@pytest.mark.parametrize(
    ("address", "claim_address", "expected"),
    [
        # The delta's address text is parsed once and reused for the same claim text:
        # the claim's own checks must still refuse what they refused.
        ("10.8.0.300", "10.8.0.300", "field 'address': '10.8.0.300' is not an IP address"),
        ("10.8.0.6", " 10.8.0.6", "claim: field 'address': ' 10.8.0.6' is not a bare host"),
        ("10.8.0.6", 167772166, "claim: field 'address': expected str, got int"),
        ("10.8.0.0/24", "10.8.0.0/24", None),  # a subnet: decoded (the table judges it)
        ("10.8.0.6", "10.8.0.6/32", "claim: field 'address': '10.8.0.6/32' is not a bare"),
    ],
)
def test_a_delta_claim_address_is_checked_like_any_other(address, claim_address, expected):
    obj = _delta_obj(address, claim_address)
    if expected is None:
        msg = decode(_body(obj), user_id="a1")
        assert isinstance(msg, Delta) and msg.claim is not None
        assert msg.claim.address == msg.address == ipaddress.ip_network("10.8.0.0/24")
        return
    assert expected in _error(obj)


def test_a_delta_claim_with_another_spelling_of_the_same_address_is_the_same_claim():
    msg = decode(_body(_delta_obj("2001:db8::1", "2001:DB8:0::1")), user_id="a1")
    assert isinstance(msg, Delta) and msg.claim is not None
    assert msg.claim.address == msg.address == ipaddress.ip_address("2001:db8::1")


def test_a_delta_claim_reuses_the_address_parsed_for_the_delta():
    msg = decode(_body(_delta_obj("10.8.0.6", "10.8.0.6")), user_id="a1")
    assert isinstance(msg, Delta) and msg.claim is not None
    assert msg.claim.address is msg.address  # one parse, one object (and its memory)


def test_record_hash_is_blake2b_of_the_documented_text():
    # docs/protocol.md "Claim digest": the text, not a representation of ours.
    import hashlib

    from meshroute.core.claimset import record_hash

    for address in ("10.8.0.6", "2001:db8::1"):
        record = ClaimRecord(ipaddress.ip_address(address), "cn x", 1700000000, 1700000000123)
        text = f"{address}|cn x|1700000000|1700000000123".encode()
        expected = int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big")
        assert record_hash(record) == expected


def test_heartbeat_digest_format():
    obj = {"v": 1, "type": "heartbeat", "origin": "a1", "epoch": 1, "seq": 1}
    obj |= {"next_hop": None, "next_hop6": None, "state_seq": 1, "count": 0, "digest": "XYZ"}
    assert "field 'digest'" in _error(obj)


def test_sync_request_target_must_be_an_agent_name():
    obj = {"v": 1, "type": "sync-request", "origin": "a1", "epoch": 1, "seq": 1}
    assert "field 'target'" in _error(obj | {"target": "no spaces"})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", "not UTF-8 JSON"),
        (b"\xff\xfe{}", "not UTF-8 JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"text"', "expected a JSON object, got str"),
        (b'{"v": NaN}', "not UTF-8 JSON"),
        (b'{"v": 1, "v": 1}', "duplicate key"),
        (b"[" * 100_000 + b"]" * 100_000, "not UTF-8 JSON"),
        (b'{"v": 1' + b"1" * 5000 + b"}", "not UTF-8 JSON"),
        (b" " * (MAX_BODY_BYTES + 1), "exceeds"),
    ],
)
def test_bodies_that_are_not_messages(body, expected):
    with pytest.raises(CodecError, match=expected):
        decode(body, user_id="a1")


# --- fuzzing ------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)


def _decode_or_codec_error(body: bytes, user_id: str | None) -> None:
    try:
        msg = decode(body, user_id=user_id)
    except CodecError:
        return
    assert msg.header.origin == user_id


@given(st.binary(max_size=512), st.none() | names)
def test_fuzz_random_bytes(body, user_id):
    _decode_or_codec_error(body, user_id)


@given(json_values)
def test_fuzz_random_json(value):
    _decode_or_codec_error(json.dumps(value).encode(), "a1")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.randoms(use_true_random=False), json_values)
def test_fuzz_mutated_valid_messages(msg, rnd: random.Random, junk):
    obj = json.loads(encode(msg))
    target = obj
    if obj.get("claims"):
        target = rnd.choice([obj, *obj["claims"]])
    key = rnd.choice(sorted(target))
    action = rnd.choice(["drop", "junk", "swap"])
    if action == "drop":
        del target[key]
    elif action == "junk":
        target[key] = junk
    else:
        other = rnd.choice(sorted(target))
        target[key], target[other] = target[other], target[key]
    _decode_or_codec_error(json.dumps(obj).encode(), msg.header.origin)


@given(messages, st.integers(min_value=0, max_value=10**6), st.integers(0, 255))
def test_fuzz_flipped_bytes(msg, position, value):
    body = bytearray(encode(msg))
    body[position % len(body)] = value
    _decode_or_codec_error(bytes(body), msg.header.origin)


def test_hundred_thousand_mutated_bodies_raise_only_codec_error():
    """The DESIGN target: >= 100k fuzzed messages, no crash (seeded, about 1 s)."""
    rnd = random.Random(1)
    sample = [
        _valid_obj(),
        {"v": 1, "type": "delta", "origin": "a1", "epoch": 1, "seq": 1, "address": "fd00::5",
         "claim": {"address": "fd00::5", "cn": "x", "since": 1, "stamp": 2}},
        {"v": 1, "type": "heartbeat", "origin": "a1", "epoch": 1, "seq": 1, "next_hop": None,
         "next_hop6": "fd00::1", "state_seq": 3, "count": 5, "digest": "0123456789abcdef"},
        {"v": 1, "type": "sync-request", "origin": "a1", "epoch": 1, "seq": 1, "target": "b2"},
    ]  # fmt: skip
    bodies = [_body(obj) for obj in sample]
    inserts = [b'"', b"0", b"-1", b"null", b"{", b"[", b"1e9", b"true", b"\\u0000", b',"x":1']
    accepted = 0
    for _ in range(100_000):
        body = bytearray(rnd.choice(bodies))
        for _ in range(rnd.randint(1, 4)):
            pos = rnd.randrange(len(body))
            op = rnd.random()
            if op < 0.4:
                body[pos] = rnd.randrange(256)
            elif op < 0.7:
                del body[pos : pos + rnd.randint(1, 5)]
            else:
                body[pos:pos] = rnd.choice(inserts)
        try:
            decode(bytes(body), user_id="a1")
            accepted += 1
        except CodecError:
            pass
    assert accepted < 5_000  # almost every mutation is caught, none crashed


def test_clock_and_sent_ms_travel_and_are_optional():
    header = Header(origin="a1", epoch=5, seq=1, clock=1_800_000_000_123, sent_ms=1_800_000_000_100)
    msg = Goodbye(header)
    assert json.loads(encode(msg))["clock"] == 1_800_000_000_123
    assert decode(encode(msg), user_id="a1") == msg
    assert decode(encode(Goodbye(_hdr())), user_id="a1").header.clock is None
    obj = json.loads(encode(msg))
    obj["sent_ms"] = -1
    assert "sent_ms" in _error(obj)


def test_a_snapshot_over_the_agents_cap_is_refused_before_its_claims_are_read():
    """Issue 12.6: a 262,144-claim snapshot stalled every agent for ~17 s."""
    obj = _valid_obj()
    obj["claims"] = [{"junk": i} for i in range(1001)]  # never looked at one by one
    with pytest.raises(CodecError, match="1001 claims exceed the limit 1000"):
        decode(_body(obj), user_id="a1", max_claims=1000)
