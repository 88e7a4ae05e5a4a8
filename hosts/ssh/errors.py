"""The one error of SSH bootstrap: a stable code, a human sentence and the step it happened in."""

from __future__ import annotations

from typing import Any

# code -> what the operator sees first (the message adds the specifics).
CODES = {
    "invalid_input": "A value of the SSH target is not acceptable.",
    "name_not_resolved": "The host name does not resolve.",
    "connection_refused": "Nothing listens on the SSH port.",
    "connection_timeout": "The host did not answer in time.",
    "ssh_protocol_error": "The peer does not speak SSH or broke the session.",
    "authentication_failed": "The SSH server refused the credentials.",
    "host_key_mismatch": "The host's key is not the pinned one.",
    "host_key_not_pinned": "No confirmed host key for this target.",
    "prerequisite_missing": "The host lacks what the agent needs.",
    "disk_full": "The host ran out of disk space.",
    "command_timeout": "A remote command did not finish in time.",
    "command_failed": "A remote command failed.",
    "bundle_failed": "The agent bundle could not be built.",
    "enrollment_failed": "The agent could not enroll with the control plane.",
    "heartbeat_timeout": "The agent did not report before the deadline.",
    "secret_unavailable": "A stored credential cannot be decrypted.",
}


class SSHError(Exception):
    """A bootstrap failure with a code from CODES, a sentence, and the step it happened in."""

    def __init__(self, code: str, message: str, *, step: str = "", **extra: Any) -> None:
        assert code in CODES, code
        super().__init__(message)
        self.code, self.message, self.step, self.extra = code, message, step, extra

    def __str__(self) -> str:
        return self.message
