"""Devices and their broker credentials: /api/devices..."""
from __future__ import annotations

from fastapi import APIRouter

from shared.api.deps import PREFIX

router = APIRouter(prefix=PREFIX)
