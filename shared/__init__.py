"""Domain logic of mqtt-saas. Nothing in this package imports azure.functions."""
