"""Build meshroute's OpenVPN plugin and call it in this process, as OpenVPN does.

:func:`build_plugin` compiles THIS checkout's ``meshroute-plugin.c`` with its own
Makefile into a directory of the test's (``make O=DIR``), so a test never runs an
older ``.so`` left in the tree or installed elsewhere. :class:`PluginHost` loads it
with ctypes and calls the v3 API with OpenVPN's structures (openvpn-plugin.h):
``openvpn_plugin_open_v3`` with argv ``[so, socket]``, ``openvpn_plugin_func_v3``
per event, ``openvpn_plugin_close_v1``. The log callback records each call's flags
and format string (the variadic arguments are not readable from ctypes).
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

from meshroute.openvpn.plugin import PLUGIN_FILE, SOURCE_DIR

LEARN_ADDRESS, CLIENT_DISCONNECT, CLIENT_CONNECT_V2 = 8, 7, 9
STRUCTVER = 5  # OPENVPN_PLUGINv3_STRUCTVER of OpenVPN 2.6
SUCCESS, ERROR = 0, 1
PLOG_ERR, PLOG_WARN, PLOG_NOTE = 1, 2, 4


def build_plugin(directory: Path) -> Path:
    """Compile the plugin into ``directory``; fail with the compiler's output."""
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["make", "-C", str(SOURCE_DIR), f"O={directory}"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"building the plugin failed:\n{done.stdout}{done.stderr}")
    return directory / PLUGIN_FILE


LOG_FUNC = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p)
StringArray = ctypes.POINTER(ctypes.c_char_p)


class Callbacks(ctypes.Structure):
    _fields_ = [("plugin_log", LOG_FUNC), ("plugin_vlog", ctypes.c_void_p),
                ("secure_memzero", ctypes.c_void_p), ("base64_encode", ctypes.c_void_p),
                ("base64_decode", ctypes.c_void_p)]  # fmt: skip


class OpenIn(ctypes.Structure):
    _fields_ = [("type_mask", ctypes.c_int), ("argv", StringArray), ("envp", StringArray),
                ("callbacks", ctypes.POINTER(Callbacks)), ("ssl_api", ctypes.c_int),
                ("ovpn_version", ctypes.c_char_p), ("major", ctypes.c_uint),
                ("minor", ctypes.c_uint), ("patch", ctypes.c_char_p)]  # fmt: skip


class OpenReturn(ctypes.Structure):
    _fields_ = [("type_mask", ctypes.c_int), ("handle", ctypes.c_void_p),
                ("return_list", ctypes.c_void_p)]  # fmt: skip


class FuncIn(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("argv", StringArray), ("envp", StringArray),
                ("handle", ctypes.c_void_p), ("per_client_context", ctypes.c_void_p),
                ("current_cert_depth", ctypes.c_int),
                ("current_cert", ctypes.c_void_p)]  # fmt: skip


class FuncReturn(ctypes.Structure):
    _fields_ = [("return_list", ctypes.c_void_p)]


def strings(values: list[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    """A NULL-terminated ``char *[]`` (the caller keeps it alive during the call)."""
    return (ctypes.c_char_p * (len(values) + 1))(*values, None)


def envp(env: dict[str, str | bytes]) -> ctypes.Array[ctypes.c_char_p]:
    return strings([k.encode() + b"=" + (v if isinstance(v, bytes) else v.encode())
                    for k, v in env.items()])  # fmt: skip


class PluginHost:
    """One loaded plugin instance (one ``plugin`` line of one OpenVPN server)."""

    def __init__(self, library: Path, *args: str) -> None:
        self.library = library
        self.logs: list[tuple[int, str]] = []
        self._lib = ctypes.CDLL(str(library))
        self._log = LOG_FUNC(self._record)  # kept: the plugin holds the pointer
        self._callbacks = Callbacks(plugin_log=self._log)
        self._argv = strings([str(library).encode(), *(a.encode() for a in args)])
        self._env = envp({"verb": "3"})
        self.type_mask = 0
        self.handle: int | None = None

    def _record(self, flags: int, _name: bytes, fmt: bytes) -> None:
        self.logs.append((flags, fmt.decode()))

    def open(self) -> int:
        args = OpenIn(0xFFFF, self._argv, self._env, ctypes.pointer(self._callbacks), 1,
                      b"OpenVPN 2.6.14", 2, 6, b"14")  # fmt: skip
        ret = OpenReturn()
        rc = self._lib.openvpn_plugin_open_v3(STRUCTVER, ctypes.byref(args), ctypes.byref(ret))
        self.type_mask, self.handle = ret.type_mask, ret.handle
        return rc

    def call(self, kind: int, argv: list[str | bytes], env: dict[str, str | bytes]) -> int:
        raw = [str(self.library).encode(), *(a if isinstance(a, bytes) else a.encode()
                                             for a in argv)]  # fmt: skip
        args = FuncIn(kind, strings(raw), envp(env), self.handle, None, 0, None)
        return self._lib.openvpn_plugin_func_v3(STRUCTVER, ctypes.byref(args),
                                                ctypes.byref(FuncReturn()))  # fmt: skip

    def close(self) -> None:
        if self.handle is not None:
            self._lib.openvpn_plugin_close_v1(ctypes.c_void_p(self.handle))
            self.handle = None

    def formats(self) -> list[str]:
        return [fmt for _, fmt in self.logs]
