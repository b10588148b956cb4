"""Azure Functions blueprints: thin adapters from triggers to shared/."""
