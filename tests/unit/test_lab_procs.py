"""meshroute.lab.procs: a process of ours counts as alive through every exec it does.

``lab up`` once failed with "s3.openvpn exited" while that OpenVPN ran: the check
read /proc/PID/cmdline while ``ip netns exec`` was exec'ing OpenVPN, and during an
execve the kernel briefly shows an empty command line (the new memory map has no
arguments yet), so the marker was "missing". The pid of a child we started and
have not reaped cannot be anybody else's, so the check must not depend on that.
"""

from __future__ import annotations

import time

from meshroute.lab import procs


def test_a_child_is_alive_while_it_execs_again_and_again(tmp_path):
    marker = str(tmp_path / "unique-marker.conf")
    # 3000 execs of env, each passing the rest on; the marker is in every argv.
    chain = ["env"] * 3000 + ["sh", "-c", "sleep 1.5", marker]
    pid = procs.spawn(None, chain, tmp_path / "chain.log")
    misses, checks = 0, 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        checks += 1
        misses += not procs.alive(pid, marker)
    assert checks > 100
    assert misses == 0, f"{misses} of {checks} checks said our running child was gone"
    assert not procs.alive(pid, str(tmp_path / "another.conf"))  # the marker still counts
    procs.stop(pid, marker)
    assert not procs.alive(pid, marker)
