"""Shared test machinery: real processes (workers, agents, servers) and network namespaces."""
