"""Reads for dashboards: latest values, series, fleet overview, /api/admin/ingest."""
from __future__ import annotations

from fastapi import APIRouter

from shared.api.deps import PREFIX

router = APIRouter(prefix=PREFIX)
