"""What the device and the server both need beneath the contract: strict config loading, broker connection settings
(URL, TLS, credentials and their redaction) and the paho client set-up, written once."""
