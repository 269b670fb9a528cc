"""`make check-real`: dhtdeb against the real Debian archive named in this machine's apt sources.

Modules:
- sources.py              the machine's apt sources (one-line and deb822), reduced to the
                          http:// Debian entries to check; the rest is skipped with a reason
- packages.py             Packages stanzas, and the fixed rule that picks the packages to download
- test_sources.py, test_packages.py   unit tests of both, in the normal suite (no network)
- test_real_archive.py    the check itself, marked `real`: two fleet hosts with a NAT uplink
                          (tests/fleet/), apt-get update / download and debootstrap through each
                          daemon; it needs root and the internet, and fails (never skips) without

Nothing here names a mirror: the check reads it from /etc/apt at run time.
"""
