"""The control plane: live configuration, reload, the admin API, fleet control over MQTT."""
