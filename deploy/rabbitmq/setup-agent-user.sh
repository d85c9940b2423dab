#!/bin/sh
# Create (or update) the RabbitMQ user of one meshroute agent, with least privilege.
#
# usage: setup-agent-user.sh [-p VHOST] [-e EXCHANGE] [-d] NAME [PASSWORD]
#
#   NAME      the agent's name (its `name` key): also its user and its queue's suffix
#   PASSWORD  the user's password; when absent or "-", read from the first line of
#             standard input (keeps it out of the shell history; note that
#             rabbitmqctl itself gets it as an argument for a moment)
#   -p VHOST  the vhost the agents use (default: meshroute, created if missing; it
#             is the path of broker_url: amqps://NAME:PASS@host:5671/meshroute)
#   -e NAME   the shared fanout exchange (default: meshroute, the `exchange` key)
#   -d        dry run: print the rabbitmqctl commands instead of running them
#
# Run it on one node of the cluster (users and permissions are cluster-wide), as a
# user that may run rabbitmqctl (root or rabbitmq). $RABBITMQCTL overrides the
# command (for example "rabbitmqctl -n rabbit@rabbit-1").
#
# Idempotent: an existing user gets the new password, its tags cleared and the same
# permissions again; an existing vhost is kept.
#
# Permissions (regexes, on VHOST only), as meshroute/lab/rabbitmq.py grants them:
#   configure  ^(meshroute\.NAME|meshroute)$              declare its own queue and
#                                                         the exchange
#   write      ^(meshroute\.NAME|meshroute|amq\.default)$  publish to the exchange and
#              to the default exchange (direct answers to one agent), and bind its own
#              queue (RabbitMQ checks queue.bind as write on the queue)
#   read       ^(meshroute\.NAME|meshroute)$              consume its own queue; bind
#                                                         from the exchange
# So an agent can neither read nor delete another agent's queue. Its identity in
# every message is this user: RabbitMQ refuses a message whose user_id property
# differs from the connection's user, and peers refuse a message without one.
# No tags: the user cannot log in to the management UI.

set -eu

usage() {
    echo "usage: $0 [-p VHOST] [-e EXCHANGE] [-d] NAME [PASSWORD]" >&2
    exit 2
}

fail() {
    echo "$0: $*" >&2
    exit 2
}

vhost=meshroute
exchange=meshroute
dry_run=
while getopts p:e:d opt; do
    case $opt in
        p) vhost=$OPTARG ;;
        e) exchange=$OPTARG ;;
        d) dry_run=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] && [ $# -le 2 ] || usage
name=$1
password=${2:--}

# The same rule as meshroute's config and codec: the name is a queue name suffix, a
# broker user and a regex fragment, so nothing outside this set may get through.
printf '%s\n' "$name" | grep -Eqx '[A-Za-z0-9][A-Za-z0-9_.-]{0,62}' && [ "$(printf '%s\n' "$name" | wc -l)" -eq 1 ] ||
    fail "invalid agent name '$name': 1-63 of A-Z a-z 0-9 _ . - starting with a letter or digit"
printf '%s\n' "$exchange" | grep -Eqx '[A-Za-z0-9_.:-]{1,255}' && [ "$(printf '%s\n' "$exchange" | wc -l)" -eq 1 ] ||
    fail "invalid exchange name '$exchange'"
[ -n "$vhost" ] || fail "empty vhost"

if [ "$password" = "-" ]; then
    if [ -t 0 ]; then
        printf 'password for %s: ' "$name" >&2
        stty -echo
        trap 'stty echo' EXIT
    fi
    IFS= read -r password || true
    if [ -t 0 ]; then
        stty echo
        echo >&2
    fi
fi
[ -n "$password" ] || fail "empty password"

# Regex-escape the dots (the only regex character the names may contain).
name_re=$(printf '%s' "$name" | sed 's/\./\\./g')
exchange_re=$(printf '%s' "$exchange" | sed 's/\./\\./g')
queue_re="meshroute\\.$name_re"
configure="^($queue_re|$exchange_re)\$"
write="^($queue_re|$exchange_re|amq\\.default)\$"
read="^($queue_re|$exchange_re)\$"

ctl=${RABBITMQCTL:-rabbitmqctl}

run() {
    if [ -n "$dry_run" ]; then
        # Show the command with the password masked.
        printf '%s' "$ctl"
        for arg in "$@"; do
            [ "$arg" = "$password" ] && arg='***'
            printf " '%s'" "$arg"
        done
        printf '\n'
    else
        # shellcheck disable=SC2086 # $ctl may carry options (-n NODE)
        $ctl "$@"
    fi
}

# Exact match of the first column of a `list_*` output.
listed() {
    [ -z "$dry_run" ] || return 1
    # shellcheck disable=SC2086
    $ctl -q "$1" --no-table-headers | awk -F '\t' -v want="$2" '$1 == want { found = 1 } END { exit !found }'
}

if listed list_vhosts "$vhost"; then
    echo "vhost $vhost exists" >&2
else
    run add_vhost "$vhost"
fi

if listed list_users "$name"; then
    echo "user $name exists: updating its password and permissions" >&2
    run change_password "$name" "$password"
else
    run add_user "$name" "$password"
fi
run set_user_tags "$name"
run set_permissions -p "$vhost" "$name" "$configure" "$write" "$read"
echo "agent user $name ready on vhost $vhost (exchange $exchange)" >&2
