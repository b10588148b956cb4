-- The series read (shared/rollups.series_points) answers from the rollups only where they are
-- complete, which the rollup job's watermark says: the app role may read it, nothing else of the
-- job's state. rollup_state has no tenant column (one platform-wide row per job) and tells only how
-- far the timer got, so it needs no row-level security. The rollups themselves are already
-- readable by the app role, each tenant its own rows (0010's tenant_isolation policies).
GRANT SELECT (name, watermark) ON rollup_state TO mqtt_saas_app;
