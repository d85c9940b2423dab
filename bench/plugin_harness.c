/*
 * plugin_harness: load an OpenVPN plugin as OpenVPN does and time each event call.
 *
 *     plugin_harness PLUGIN.so SOCKET CALLS PACE_US
 *
 * Opens the plugin (openvpn_plugin_open_v3, argv [PLUGIN.so, SOCKET]), then for each
 * event type (learn-address add, client-connect-v2, client-disconnect) makes CALLS
 * calls of openvpn_plugin_func_v3 with an environment like OpenVPN 2.6's for a
 * client (72 variables, the ones the plugin reads near the end), PACE_US
 * microseconds apart (0: back to back). Each call is timed with CLOCK_MONOTONIC
 * around the function call: the time OpenVPN's event loop would be held. Prints one
 * line per event type: "event n p50_us p90_us p99_us max_us". Built by
 * bench/bench_hook.py; it changes nothing outside the socket it sends to.
 */

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openvpn-plugin.h>

typedef int (*open_v3_t)(int, struct openvpn_plugin_args_open_in const *,
                         struct openvpn_plugin_args_open_return *);
typedef int (*func_v3_t)(int, struct openvpn_plugin_args_func_in const *,
                         struct openvpn_plugin_args_func_return *);
typedef void (*close_t)(openvpn_plugin_handle_t);

static void
log_to_stderr(openvpn_plugin_log_flags_t flags, const char *name, const char *format, ...)
{
    va_list ap;

    (void)flags;
    va_start(ap, format);
    fprintf(stderr, "PLUGIN %s: ", name);
    vfprintf(stderr, format, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* What OpenVPN 2.6 sets for a TLS client on a subnet-topology server. */
static const char *client_env[] = {
    "X509_0_CN=cli1", "X509_0_O=meshroute lab", "X509_1_CN=meshroute-lab-ca",
    "bytes_received=0", "bytes_sent=0", "common_name=cli1", "config=/etc/openvpn/server.conf",
    "daemon=0", "daemon_log_redirect=0", "daemon_pid=4242", "daemon_start_time=1795690000",
    "dev=tun0", "dev_type=tun", "ifconfig_broadcast=10.100.100.255",
    "ifconfig_ipv6_local=fd00:100::1", "ifconfig_ipv6_netbits=64",
    "ifconfig_ipv6_remote=fd00:100::1", "ifconfig_local=10.100.100.1",
    "ifconfig_netmask=255.255.255.0", "link_mtu=1621", "local_1=198.18.0.1",
    "local_port_1=1194", "proto_1=udp", "redirect_gateway=0", "remote_port_1=1194",
    "route_net_gateway=198.18.0.254", "route_vpn_gateway=10.100.100.1",
    "script_context=init", "script_type=client-connect", "tls_digest_0=aa:bb:cc:dd:ee:ff",
    "tls_digest_1=11:22:33:44:55:66", "tls_digest_sha256_0=aa:bb:cc:dd:ee:ff:00:11:22:33",
    "tls_digest_sha256_1=11:22:33:44:55:66:77:88:99:00", "tls_id_0=CN=cli1, O=meshroute lab",
    "tls_id_1=CN=meshroute-lab-ca", "tls_serial_0=1234567890", "tls_serial_1=1",
    "tls_serial_hex_0=49:96:02:d2", "tls_serial_hex_1=01", "tun_mtu=1500", "untrusted_ip=198.18.1.7",
    "untrusted_port=58528", "verb=3", "IV_VER=2.6.14", "IV_PLAT=linux", "IV_TCPNL=1",
    "IV_MTU=1600", "IV_NCP=2", "IV_CIPHERS=AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305",
    "IV_PROTO=990", "IV_LZO_STUB=1", "IV_COMP_STUB=1", "IV_COMP_STUBv2=1",
    "IV_SSO=openurl,crtext", "IV_HWADDR=02:00:00:00:00:07", "IV_GUI_VER=none",
    "n_clients=17", "password=", "username=", "session_id=abcdefgh12345678",
    "session_state=Authenticated", "peer_id=3", "time_ascii=2026-11-29 02:00:00",
    "ifconfig_pool_netmask=255.255.255.0", "vlan_pvid=0", "push_reply=",
    "time_unix=1795696544", "trusted_ip=198.18.1.7", "trusted_port=58528",
    "ifconfig_pool_remote_ip=10.100.100.130", "ifconfig_pool_remote_ip6=fd00:100::82",
    NULL,
};

static double
now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int
by_value(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

static void
report(const char *event, double *samples, int n)
{
    qsort(samples, (size_t)n, sizeof *samples, by_value);
    printf("%s %d %.2f %.2f %.2f %.2f\n", event, n, samples[n / 2], samples[n * 9 / 10],
           samples[n * 99 / 100], samples[n - 1]);
}

int
main(int argc, char **argv)
{
    if (argc != 5)
    {
        fprintf(stderr, "usage: %s PLUGIN.so SOCKET CALLS PACE_US\n", argv[0]);
        return 2;
    }
    int calls = atoi(argv[3]), pace_us = atoi(argv[4]);
    void *lib = dlopen(argv[1], RTLD_NOW);
    if (!lib || calls < 1)
    {
        fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
        return 1;
    }
    open_v3_t open_v3 = (open_v3_t)dlsym(lib, "openvpn_plugin_open_v3");
    func_v3_t func_v3 = (func_v3_t)dlsym(lib, "openvpn_plugin_func_v3");
    close_t close_v1 = (close_t)dlsym(lib, "openvpn_plugin_close_v1");
    struct openvpn_plugin_callbacks callbacks = { .plugin_log = log_to_stderr };
    const char *open_argv[] = { argv[1], argv[2], NULL };
    const char *open_env[] = { "verb=3", NULL };
    struct openvpn_plugin_args_open_in in = {
        0xFFFF, open_argv, open_env, &callbacks, SSLAPI_OPENSSL, "OpenVPN 2.6.14", 2, 6, "14"
    };
    struct openvpn_plugin_args_open_return out = { 0 };
    if (open_v3(OPENVPN_PLUGINv3_STRUCTVER, &in, &out) != OPENVPN_PLUGIN_FUNC_SUCCESS)
        return 1;

    const char *learn_argv[] = { argv[1], "add", "10.100.100.130", "cli1", NULL };
    const char *no_argv[] = { argv[1], NULL };
    struct
    {
        const char *name;
        int type;
        const char **argv;
    } events[] = {
        { "learn-address", OPENVPN_PLUGIN_LEARN_ADDRESS, learn_argv },
        { "client-connect", OPENVPN_PLUGIN_CLIENT_CONNECT_V2, no_argv },
        { "client-disconnect", OPENVPN_PLUGIN_CLIENT_DISCONNECT, no_argv },
    };
    double *samples = calloc((size_t)calls, sizeof *samples);
    struct timespec pause = { 0, pace_us * 1000L };

    for (size_t e = 0; e < sizeof events / sizeof events[0]; e++)
    {
        for (int i = 0; i < calls; i++)
        {
            struct openvpn_plugin_args_func_in args = {
                events[e].type, events[e].argv, client_env, out.handle, NULL, 0, NULL
            };
            struct openvpn_plugin_args_func_return ret = { NULL };
            double t0 = now_us();
            func_v3(OPENVPN_PLUGINv3_STRUCTVER, &args, &ret);
            samples[i] = now_us() - t0;
            if (pace_us)
                nanosleep(&pause, NULL);
        }
        report(events[e].name, samples, calls);
    }
    close_v1(out.handle);
    free(samples);
    return 0;
}
