"""The Connector side of the bridge: the client and its notification channel in, typed
events out (:mod:`bridge.upstream.side`), the webhook receiver, the Connector's
reachability, calls with the bridge's own deadlines, pre-subscription rules and LwM2M JSON
reads. Nothing here knows MQTT."""
