"""Client library for chronotickd. Depends only on the standard library and msgpack."""

from chronotick_client.client import Client, DaemonUnavailable, RequestFailed
from chronotick_client.protocol import PROTOCOL_VERSION, default_socket_path

__all__ = ["PROTOCOL_VERSION", "Client", "DaemonUnavailable", "RequestFailed",
           "default_socket_path"]
