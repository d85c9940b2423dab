#!/bin/sh
# The image's entry point: `meshroute ARGS`, except that `agent` runs on the
# interpreter that carries CAP_NET_ADMIN (python-netadmin, see docker/Dockerfile).
# The kernel refuses to start that binary when the container's bounding set lacks
# CAP_NET_ADMIN; say so in words instead of "Operation not permitted".
set -eu
if [ "${1:-}" = agent ]; then
    bounding=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)
    # CAP_NET_ADMIN is capability 12.
    if [ $(( (0x$bounding >> 12) & 1 )) -ne 1 ]; then
        echo "meshroute agent: the container lacks CAP_NET_ADMIN: run it with --cap-add NET_ADMIN (compose: cap_add: [NET_ADMIN])" >&2
        exit 2
    fi
    exec /opt/meshroute/bin/python-netadmin -m meshroute "$@"
fi
exec /opt/meshroute/bin/meshroute "$@"
