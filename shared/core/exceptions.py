"""Domain exceptions. Each docstring is the default message."""


class MqttSaasError(Exception):
    """An mqtt-saas operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(MqttSaasError):
    """A setting is missing or invalid."""


class BrokerUnavailable(MqttSaasError):
    """The MQTT broker could not be reached or refused the connection."""


class DynsecError(MqttSaasError):
    """The broker's dynamic-security plugin refused a command."""
