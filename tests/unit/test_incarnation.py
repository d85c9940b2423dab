"""The persisted epoch never goes back, even when the clock does (issue 7.3)."""

from __future__ import annotations

from meshroute.agent.incarnation import next_epoch


def test_epoch_follows_the_wall_clock_and_never_goes_back(tmp_path):
    first = next_epoch(tmp_path, 5_000)
    assert first == 5_000
    stepped_back = next_epoch(tmp_path, 1_000)  # the clock was stepped back 4 s
    assert stepped_back == 5_001
    assert next_epoch(tmp_path, 9_000) == 9_000


def test_a_missing_directory_is_made_and_garbage_is_ignored(tmp_path):
    state = tmp_path / "deep" / "state"
    assert next_epoch(state, 7) == 7
    (state / "agent.epoch").write_text("not a number\n")
    assert next_epoch(state, 3) == 3
    assert (state / "agent.epoch").read_text() == "3\n"


def test_an_unwritable_place_falls_back_to_the_wall_clock(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert next_epoch(blocker / "sub", 42) == 42  # a file where a directory should be
    assert next_epoch(None, 43) == 43


def test_own_claims_are_kept_across_a_restart(tmp_path):
    import ipaddress

    from meshroute.agent.incarnation import load_claims, save_claims
    from meshroute.core.model import ClaimRecord

    records = [
        ClaimRecord(ipaddress.ip_address("10.100.0.7"), "alice", 1_800_000_000, 1_800_000_000_123),
        ClaimRecord(ipaddress.ip_address("fd10::7"), 'bob, the "second"', 1_800_000_001, 5),
    ]
    assert load_claims(tmp_path, "s1") == []
    save_claims(tmp_path, "s1", records)
    assert load_claims(tmp_path, "s1") == records
    assert load_claims(tmp_path, "s2") == []
    (tmp_path / "s1.claims").write_text("[[1, 2]]")  # damaged: ignored, not fatal
    assert load_claims(tmp_path, "s1") == []
