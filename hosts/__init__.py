"""Hosts: enrollment, inventory, liveness, certification, operations, SSH bootstrap."""
