"""The one family of errors dhtdeb raises.

Every parser of untrusted input (mirror responses, signed indices, peer HTTP, DHT datagrams, config)
either returns a value or raises a subclass of `DhtdebError`. `RemoteProtocolError` means the other
side broke the protocol (a peer or mirror to penalise); `VerificationError` means bytes did not
match what the signed chain says; `ConfigError` means the operator asked for something impossible.
"""


class DhtdebError(Exception):
    """Base of every error dhtdeb raises on purpose."""


class ConfigError(DhtdebError):
    """A command-line option, config file or environment value is unusable."""


class RemoteProtocolError(DhtdebError):
    """A mirror, peer or DHT node sent something that breaks the protocol."""


class MirrorError(RemoteProtocolError):
    """The upstream mirror could not be reached or answered with an error."""


class VerificationError(DhtdebError):
    """Bytes do not match what the GPG-verified index chain says they must be."""


class SignatureError(VerificationError):
    """A Release/InRelease signature is missing, bad, or from a key that is not trusted."""


class PeerWireError(RemoteProtocolError):
    """A peer's request or answer does not follow the peer protocol v1 (swarm/wire.py)."""


class IndexFormatError(RemoteProtocolError):
    """A Release or Packages file is malformed (after its signature or hash was checked)."""
