"""Corral's OCI runtime: ``config.json`` bundle in, running container out.

Modules: ``linux`` (the OS seam), ``config`` (parse + validate an OCI config), ``spec``
(protocol ContainerSpec -> OCI config), ``namespaces``, ``rootfs``, ``security``, ``process``
(the linear start sequence), ``shim`` (per-container monitor), ``state``, ``runtime`` (the
create/start/kill/delete operations), ``zygote`` (fast path) and ``cli``.
"""
