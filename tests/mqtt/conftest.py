"""Fixtures of test_mqtt_daemon (a real broker, peers, signing keys) for every MQTT test module."""

from tests.mqtt.test_mqtt_daemon import broker, peers, signer  # noqa: F401
