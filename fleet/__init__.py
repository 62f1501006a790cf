"""A technician's tools for a fleet of classroom devices: the inventory, certificates and the broker's configuration.

They run on the technician's laptop or on the server, never on a device. Nothing here imports the device's
runtime or the server; the topic names come from the shared contract.
"""
