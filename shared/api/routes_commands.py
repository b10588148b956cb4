"""Commands to devices: /api/devices/{id}/commands."""
from __future__ import annotations

from fastapi import APIRouter

from shared.api.deps import PREFIX

router = APIRouter(prefix=PREFIX)
