"""Image and file I/O: decoding, atomic writes, the cache folder."""
