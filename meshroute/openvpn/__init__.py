"""The OpenVPN edge: status parser, management client, hook sender and receiver.

Keep this file empty of imports: ``meshroute hook`` imports :mod:`meshroute.openvpn.hook`
for every client event and must not pay for anything else.
"""
