#!/bin/sh
# One-shot setup of the compose lab (docker/compose.yaml): a PKI for OpenVPN, the
# agents' broker passwords, every OpenVPN and agent config, into the volume at /lab.
# Idempotent: a second run finds /lab/.done and changes nothing.
#
# LAB ONLY: every secret is world-readable inside the volume (the agents run as uid
# 10001, RabbitMQ as 999, OpenVPN as root, and all read from it). Production: see
# docs/install.md.
set -eu
LAB=${LAB:-/lab}
SERVERS=${SERVERS:-"1 2 3"}
CLIENTS=${CLIENTS:-"1 2 3"}
AGENT_UID=${AGENT_UID:-10001}
RABBIT_UID=${RABBIT_UID:-999}
# How OpenVPN runs meshroute's hook (the stdlib-only file, python -S) and where it sends.
HOOK_PROGRAM=${HOOK_PROGRAM:-/usr/bin/python3 -S /usr/local/lib/meshroute-hook.py}
HOOK_SOCKET=${HOOK_SOCKET:-/run/meshroute/hook.sock}

if [ -e "$LAB/.done" ]; then
    echo "lab-init: $LAB is set up already"
    exit 0
fi
umask 022
mkdir -p "$LAB/pki" "$LAB/passwords" "$LAB/ccd" "$LAB/rabbitmq"
cd "$LAB/pki"

# --- PKI: one CA, a certificate per OpenVPN server and client (EC keys) -------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout ca.key -out ca.pem -days 3650 -subj "/CN=meshroute lab CA" 2>/dev/null
issue() {  # issue NAME serverAuth|clientAuth
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=%s\n' "$2" > "$1.ext"
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -days 3650 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
for k in $SERVERS; do issue "s$k" serverAuth; done
for j in $CLIENTS; do issue "c$j" clientAuth; done
chmod 0644 ./*.key

# --- broker passwords (read back by `meshroute broker definitions --password-dir`) --
for k in $SERVERS; do openssl rand -hex 16 > "$LAB/passwords/s$k"; done
openssl rand -hex 16 > "$LAB/passwords/admin"
chown "$RABBIT_UID:$RABBIT_UID" "$LAB/rabbitmq"

# --- sticky client addresses: cJ is 10.100.100.(64+J) on every server ---------------
for j in $CLIENTS; do
    echo "ifconfig-push 10.100.100.$((64 + j)) 255.255.255.0" > "$LAB/ccd/c$j"
done

# --- servers: OpenVPN config, management password, agent config ---------------------
pool_size=42
for k in $SERVERS; do
    d="$LAB/s$k"
    mkdir -p "$d"
    openssl rand -hex 12 > "$d/mgmt-pass"
    start=$((128 + (k - 1) * pool_size))
    end=$((start + pool_size - 1))
    hook="$HOOK_PROGRAM --socket $HOOK_SOCKET"
    cat > "$d/openvpn.conf" <<CONF
# compose lab: OpenVPN server s$k (see deploy/openvpn/server-snippet.conf)
mode server
tls-server
proto udp
port 1194
dev tun0
dev-type tun
topology subnet
ifconfig 10.100.100.$k 255.255.255.0
ifconfig-pool 10.100.100.$start 10.100.100.$end
push "topology subnet"
push "route-gateway 10.100.100.$k"
client-config-dir $LAB/ccd
ca $LAB/pki/ca.pem
cert $LAB/pki/s$k.pem
key $LAB/pki/s$k.key
dh none
remote-cert-tls client
keepalive 10 60
explicit-exit-notify 1
management 127.0.0.1 7505 $d/mgmt-pass
script-security 2
learn-address "$hook learn-address"
client-connect "$hook client-connect"
client-disconnect "$hook client-disconnect"
disable-dco
persist-key
verb 3
CONF
    cat > "$d/meshroute.conf" <<CONF
# compose lab: the agent of OpenVPN server s$k (see deploy/meshroute.conf.example)
name = s$k
broker_url = amqp://s$k:$(cat "$LAB/passwords/s$k")@10.200.200.254:5672/meshroute
exchange = meshroute
next_hop = 10.200.200.$k
client_networks = 10.100.100.0/24
openvpn_mgmt = 127.0.0.1:7505
openvpn_mgmt_pass_file = $d/mgmt-pass
hook_socket = $HOOK_SOCKET
control_socket = /run/meshroute/meshroute.sock
metrics_listen = 10.200.200.$k:9105
CONF
    # The agent (uid $AGENT_UID) creates its sockets here; OpenVPN (root) sends to them.
    if [ -d "/vol/run-s$k" ]; then
        chown "$AGENT_UID:$AGENT_UID" "/vol/run-s$k"
    fi
done

# --- clients: every server listed, their own first ----------------------------------
nservers=$(echo "$SERVERS" | wc -w)
for j in $CLIENTS; do
    d="$LAB/c$j"
    mkdir -p "$d"
    first=$(( (j - 1) % nservers + 1 ))
    {
        echo "# compose lab: client c$j, home server s$first"
        echo "client"
        echo "dev tun0"
        echo "proto udp"
        echo "remote 198.18.0.$first 1194"
        for k in $SERVERS; do [ "$k" = "$first" ] || echo "remote 198.18.0.$k 1194"; done
        echo "server-poll-timeout 5"
        echo "nobind"
        echo "ca $LAB/pki/ca.pem"
        echo "cert $LAB/pki/c$j.pem"
        echo "key $LAB/pki/c$j.key"
        echo "remote-cert-tls server"
        echo "explicit-exit-notify 1"
        echo "disable-dco"
        echo "verb 3"
    } > "$d/client.conf"
done

touch "$LAB/.done"
echo "lab-init: $LAB ready"
