"""Plans, quotas and usage, the audit log, and the platform operator's tenant administration."""
from __future__ import annotations

from fastapi import APIRouter

from shared.api.deps import PREFIX

router = APIRouter(prefix=PREFIX)
