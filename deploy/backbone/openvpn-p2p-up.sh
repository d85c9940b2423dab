#!/bin/sh
# OpenVPN `up` script of a point-to-point backbone tunnel (with ifconfig-noexec):
# this server's ONE backbone address on every tunnel, the peer's as `peer`, so
# `CLIENT via PEER` leaves by the tunnel toward PEER. IPv6: LOCAL/128 and a /128
# route to the peer, whatever ifconfig-ipv6's /bits (a /64 on every tunnel would
# make the prefix ambiguous).
# OpenVPN passes dev, ifconfig_local, ifconfig_remote, ifconfig_ipv6_local and
# ifconfig_ipv6_remote in the environment. Same text: deploy/backbone/openvpn-p2p-up.sh
set -e
ip link set "$dev" up
ip addr add "$ifconfig_local" peer "$ifconfig_remote" dev "$dev"
if [ -n "$ifconfig_ipv6_local" ]; then
    ip -6 addr add "$ifconfig_ipv6_local/128" dev "$dev" nodad
    ip -6 route add "$ifconfig_ipv6_remote/128" dev "$dev"
fi
