"""The device's MQTT layer: its settings, the store-and-forward sender, commands and health.

Nothing is imported here, so that `import device.mqtt.config` loads no paho client and no offline queue.
"""
