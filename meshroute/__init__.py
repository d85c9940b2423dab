"""meshroute: host routes for clients of many OpenVPN servers sharing one VPN subnet."""

__version__ = "0.1.0"
