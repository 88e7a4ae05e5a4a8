"""Host certification checks: pure functions over the inventory dict, one module per area.

Each returns a Finding with evidence copied from the inventory, so the control plane can show
why without asking the host again. A missing inventory section gives ``unknown``, never pass.
Importing this package registers every check.
"""

from __future__ import annotations

from agent.certification.host import kernel, selinux, software

__all__ = ["kernel", "selinux", "software"]
