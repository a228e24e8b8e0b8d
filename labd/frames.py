"""The wire format (one JSON value per line) lives in ``labd_client.protocol``, shared with
the clients; re-exported here so daemon modules keep their imports."""
from labd_client.protocol import frame, parse_frame  # noqa: F401
