"""The plant's side: the AM-Vision payload, the outbox and relay that deliver it, MQTT, and requests."""
