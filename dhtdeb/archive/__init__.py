"""The Debian archive side: signed Release files, Packages indices, and the path → hash index."""
