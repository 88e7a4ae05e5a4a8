"""Images on the control plane: registration and pulls onto hosts (an Operation per host),
encrypted registry credentials, uploaded archives stored as content-addressed blobs and
served to agents by the read-only registry endpoint, and per-host registry tokens.

The control plane imports nothing of ``agent/`` but ``agent.protocol``: the archive parser
here is its own (small: it only reads documents and verifies digests; layers are never
unpacked on the control plane).
"""
