"""SSH bootstrap of agents: validation, pinned-key paramiko sessions, bundle, installer."""
