/*
 * meshroute-plugin.so: hand OpenVPN's learn-address, client-connect and
 * client-disconnect events to the local meshroute agent, inside OpenVPN's process.
 *
 *     plugin /usr/local/lib/meshroute/meshroute-plugin.so [/run/meshroute/hook.sock]
 *
 * It sends exactly the datagram the script hook sends (meshroute/openvpn/hook.py;
 * the contract is meshroute/openvpn/events.py, version 1: one flat JSON object per
 * event, same keys in the same order), to the agent's hook socket.
 *
 * Invariants (OpenVPN's event loop is single-threaded and waits for every call):
 *
 * - Never blocks: one AF_UNIX/SOCK_DGRAM socket, opened once (CLOEXEC, NONBLOCK),
 *   connected to the hook socket when possible; each event is one send() with
 *   MSG_DONTWAIT. A missing agent, a full receive queue or any other failure drops
 *   the event (the agent's status poll repairs it) and is counted; the log says so
 *   at the first drop of a run, every 1000th, and when the agent is reached again.
 * - Never rejects a client: every event call returns OPENVPN_PLUGIN_FUNC_SUCCESS,
 *   also for events it cannot encode. Only a bad "plugin" line fails at start.
 * - No allocation per event: the datagram is built in a stack buffer; every value
 *   has a byte bound (MAX_VALUE), an event that does not fit is dropped.
 * - The JSON is valid UTF-8 whatever OpenVPN passes: control characters are
 *   escaped as \u00XX, each byte of an invalid UTF-8 sequence becomes '?' (what
 *   Python's encode(errors="replace") does for the script hook).
 * - The socket is connected at start, before OpenVPN drops privileges or chroots;
 *   after an agent restart (the old peer is gone: ECONNREFUSED) it reconnects by
 *   path once per event, so with "user"/"group" the socket's group must let
 *   OpenVPN's user write (the agent's hook_socket_group), as for the scripts.
 */

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <openvpn-plugin.h>

#define PLUGIN_NAME "meshroute"
#define DEFAULT_SOCKET "/run/meshroute/hook.sock"
#define MAX_DATAGRAM 4096 /* events.MAX_DATAGRAM: the receiver refuses more */
#define MAX_VALUE 1024    /* bytes of one value before escaping */
#define LOG_EVERY 1000    /* while dropping, one log line per this many drops */
/* Built with -fvisibility=hidden: only the plugin API is exported. */
#define EXPORT __attribute__((visibility("default")))

struct context
{
    int fd;
    int connected;
    struct sockaddr_un addr;
    socklen_t addrlen;
    plugin_log_t log;
    unsigned long sent;
    unsigned long dropped;
    unsigned long dropped_in_a_row;
};

/* ---- the datagram: a bounded writer over a stack buffer ------------------------ */

struct out
{
    char *at;
    char *end;
    int overflow; /* set once anything did not fit: the event is dropped */
};

static void
put_bytes(struct out *o, const char *s, size_t n)
{
    if (o->overflow || (size_t)(o->end - o->at) < n)
    {
        o->overflow = 1;
        return;
    }
    memcpy(o->at, s, n);
    o->at += n;
}

static void
put(struct out *o, const char *s)
{
    put_bytes(o, s, strlen(s));
}

/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid. */
static size_t
utf8_length(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len, i;
    unsigned char lo = 0x80, hi = 0xBF; /* bounds of the second byte */

    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF)
    {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* no overlong forms */
        if (c == 0xED)
            hi = 0x9F; /* no surrogates */
    }
    else if (c >= 0xF0 && c <= 0xF4)
    {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F; /* nothing above U+10FFFF */
    }
    else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

/* A JSON string, or null for NULL and "" (the script hook's "or None"). */
static void
put_value(struct out *o, const char *value)
{
    const unsigned char *s = (const unsigned char *)value;
    size_t n, i, len;
    char esc[8];

    if (value == NULL || value[0] == '\0')
    {
        put(o, "null");
        return;
    }
    n = strnlen(value, MAX_VALUE + 1);
    if (n > MAX_VALUE)
    {
        o->overflow = 1;
        return;
    }
    put(o, "\"");
    for (i = 0; i < n; i += len)
    {
        len = utf8_length(s + i, n - i);
        if (len == 0)
        {
            put(o, "?");
            len = 1;
        }
        else if (s[i] == '"' || s[i] == '\\')
        {
            esc[0] = '\\';
            esc[1] = (char)s[i];
            put_bytes(o, esc, 2);
        }
        else if (s[i] < 0x20)
        {
            snprintf(esc, sizeof esc, "\\u%04x", s[i]);
            put_bytes(o, esc, 6);
        }
        else
            put_bytes(o, (const char *)s + i, len);
    }
    put(o, "\"");
}

static void
put_field(struct out *o, const char *key, const char *value)
{
    put(o, ",\"");
    put(o, key);
    put(o, "\":");
    put_value(o, value);
}

static void
put_ts_ms(struct out *o)
{
    struct timespec now;
    char text[32];
    long long ms;

    clock_gettime(CLOCK_REALTIME, &now);
    ms = (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    snprintf(text, sizeof text, ",\"ts_ms\":%lld}", ms);
    put(o, text);
}

static const char *
get_env(const char *name, const char *envp[])
{
    size_t len = strlen(name);
    int i;

    for (i = 0; envp && envp[i]; i++)
        if (strncmp(envp[i], name, len) == 0 && envp[i][len] == '=')
            return envp[i] + len + 1;
    return NULL;
}

static const char *
either(const char *first, const char *second)
{
    return (first && first[0]) ? first : second;
}

/* argv: [plugin path, op, address, common name (absent on a reaper delete)] */
static int
encode_learn_address(struct out *o, const char *argv[], const char *envp[])
{
    int argc = 0;

    while (argv && argv[argc])
        argc++;
    if (argc < 3 || argc > 4
        || (strcmp(argv[1], "add") && strcmp(argv[1], "update") && strcmp(argv[1], "delete")))
        return -1;
    put(o, "{\"v\":1,\"event\":\"learn-address\"");
    put_field(o, "op", argv[1]);
    put_field(o, "address", argv[2]);
    put_field(o, "common_name", argc == 4 ? argv[3] : NULL);
    put_field(o, "time_unix", get_env("time_unix", envp));
    put_ts_ms(o);
    return 0;
}

static int
encode_session(struct out *o, const char *event, const char *op, const char *envp[])
{
    put(o, "{\"v\":1,\"event\":\"");
    put(o, event);
    put(o, "\"");
    put_field(o, "op", op);
    put_field(o, "address", get_env("ifconfig_pool_remote_ip", envp));
    put_field(o, "address6", get_env("ifconfig_pool_remote_ip6", envp));
    put_field(o, "common_name", get_env("common_name", envp));
    put_field(o, "time_unix", get_env("time_unix", envp));
    put_field(o, "trusted_ip",
              either(get_env("trusted_ip", envp), get_env("trusted_ip6", envp)));
    put_field(o, "trusted_port", get_env("trusted_port", envp));
    put_ts_ms(o);
    return 0;
}

/* ---- sending ------------------------------------------------------------------ */

static int
try_connect(struct context *ctx)
{
    ctx->connected = connect(ctx->fd, (struct sockaddr *)&ctx->addr, ctx->addrlen) == 0;
    return ctx->connected;
}

/* 0 when sent, else the errno of the last try. */
static int
send_datagram(struct context *ctx, const char *data, size_t len)
{
    int tries;

    for (tries = 0; tries < 2; tries++)
    {
        if (!ctx->connected && !try_connect(ctx))
            return errno;
        if (send(ctx->fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)len)
            return 0;
        if (errno != ECONNREFUSED && errno != ENOTCONN && errno != ECONNRESET)
            return errno; /* EAGAIN: the agent's queue is full; retrying would not help */
        ctx->connected = 0; /* the agent restarted: its new socket has the same path */
    }
    return errno;
}

static void
note_drop(struct context *ctx, const char *why)
{
    ctx->dropped++;
    ctx->dropped_in_a_row++;
    if (ctx->dropped_in_a_row == 1 || ctx->dropped_in_a_row % LOG_EVERY == 0)
        ctx->log(PLOG_WARN, PLUGIN_NAME,
                 "agent not reached at %s (%s): event dropped (%lu in a row, %lu in all); "
                 "the agent's status poll repairs it",
                 ctx->addr.sun_path, why, ctx->dropped_in_a_row, ctx->dropped);
}

static void
note_sent(struct context *ctx)
{
    ctx->sent++;
    if (ctx->dropped_in_a_row)
        ctx->log(PLOG_NOTE, PLUGIN_NAME, "agent reached again at %s after %lu dropped events",
                 ctx->addr.sun_path, ctx->dropped_in_a_row);
    ctx->dropped_in_a_row = 0;
}

static void
handle_event(struct context *ctx, int type, const char *argv[], const char *envp[])
{
    char buffer[MAX_DATAGRAM];
    struct out o = { buffer, buffer + sizeof buffer, 0 };
    int bad, err;

    if (type == OPENVPN_PLUGIN_LEARN_ADDRESS)
        bad = encode_learn_address(&o, argv, envp);
    else if (type == OPENVPN_PLUGIN_CLIENT_CONNECT_V2)
        bad = encode_session(&o, "client-connect", "connect", envp);
    else if (type == OPENVPN_PLUGIN_CLIENT_DISCONNECT)
        bad = encode_session(&o, "client-disconnect", "disconnect", envp);
    else
        return;
    if (bad)
    {
        note_drop(ctx, "learn-address arguments are not OP ADDR [CN]");
        return;
    }
    if (o.overflow)
    {
        note_drop(ctx, "a value is longer than the datagram allows");
        return;
    }
    err = send_datagram(ctx, buffer, (size_t)(o.at - buffer));
    if (err)
        note_drop(ctx, err == EAGAIN ? "receive queue full: agent stuck?" : strerror(err));
    else
        note_sent(ctx);
}

/* ---- the plugin API (v3) ------------------------------------------------------ */

EXPORT int
openvpn_plugin_min_version_required_v1(void)
{
    return 3;
}

EXPORT int
openvpn_plugin_open_v3(const int version, struct openvpn_plugin_args_open_in const *args,
                       struct openvpn_plugin_args_open_return *ret)
{
    plugin_log_t log = args->callbacks->plugin_log;
    const char *path = DEFAULT_SOCKET;
    struct context *ctx;
    int argc = 0;

    if (version < OPENVPN_PLUGINv3_STRUCTVER)
    {
        log(PLOG_ERR, PLUGIN_NAME, "OpenVPN's plugin interface v%d is older than v%d",
            version, OPENVPN_PLUGINv3_STRUCTVER);
        return OPENVPN_PLUGIN_FUNC_ERROR;
    }
    while (args->argv[argc])
        argc++;
    if (argc > 2)
    {
        log(PLOG_ERR, PLUGIN_NAME, "usage: plugin %s [HOOK_SOCKET] (got %d arguments)",
            args->argv[0], argc - 1);
        return OPENVPN_PLUGIN_FUNC_ERROR;
    }
    if (argc == 2)
        path = args->argv[1];
    if (path[0] != '/' || strlen(path) >= sizeof ctx->addr.sun_path)
    {
        log(PLOG_ERR, PLUGIN_NAME, "hook socket must be an absolute path under %zu bytes: %s",
            sizeof ctx->addr.sun_path, path);
        return OPENVPN_PLUGIN_FUNC_ERROR;
    }
    ctx = calloc(1, sizeof *ctx);
    if (ctx == NULL)
        return OPENVPN_PLUGIN_FUNC_ERROR;
    ctx->log = log;
    ctx->addr.sun_family = AF_UNIX;
    strcpy(ctx->addr.sun_path, path);
    ctx->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path) + 1);
    ctx->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ctx->fd < 0)
    {
        log(PLOG_ERR | PLOG_ERRNO, PLUGIN_NAME, "cannot open a unix datagram socket");
        free(ctx);
        return OPENVPN_PLUGIN_FUNC_ERROR;
    }
    if (!try_connect(ctx))
        log(PLOG_NOTE | PLOG_ERRNO, PLUGIN_NAME,
            "agent not listening on %s yet; events are sent once it is", path);
    log(PLOG_NOTE, PLUGIN_NAME, "sending learn-address, client-connect and client-disconnect "
        "to %s", path);
    ret->type_mask = OPENVPN_PLUGIN_MASK(OPENVPN_PLUGIN_LEARN_ADDRESS)
                     | OPENVPN_PLUGIN_MASK(OPENVPN_PLUGIN_CLIENT_CONNECT_V2)
                     | OPENVPN_PLUGIN_MASK(OPENVPN_PLUGIN_CLIENT_DISCONNECT);
    ret->handle = (openvpn_plugin_handle_t)ctx;
    return OPENVPN_PLUGIN_FUNC_SUCCESS;
}

EXPORT int
openvpn_plugin_func_v3(const int version, struct openvpn_plugin_args_func_in const *args,
                       struct openvpn_plugin_args_func_return *ret)
{
    (void)version;
    (void)ret; /* client-connect-v2: no dynamic config, return_list stays empty */
    handle_event((struct context *)args->handle, args->type, args->argv, args->envp);
    return OPENVPN_PLUGIN_FUNC_SUCCESS; /* always: meshroute never costs a client */
}

EXPORT void
openvpn_plugin_close_v1(openvpn_plugin_handle_t handle)
{
    struct context *ctx = (struct context *)handle;

    ctx->log(PLOG_NOTE, PLUGIN_NAME, "closing: %lu events sent, %lu dropped", ctx->sent,
             ctx->dropped);
    close(ctx->fd);
    free(ctx);
}
