"""Custom checkov checks for the Bicep templates (loaded with --external-checks-dir infra/checkov)."""
