"""dhtdeb: peer-to-peer distribution of Debian packages behind a verifying apt proxy."""

__version__ = "0.1.0"
