"""The MQTT tests' fixtures (a real broker, signing keys), shared with the fleet tests."""

from tests.mqtt.test_mqtt_daemon import broker, signer  # noqa: F401
