"""The Connector side of the bridge: the client and its notification channel in, typed
events out (:mod:`bridge.upstream.side`), the one outbound port the extensions call
(:mod:`bridge.upstream.port`) with each call's deadline and retries
(:mod:`bridge.upstream.async_calls`), the webhook receiver, the Connector's reachability,
pre-subscription rules and LwM2M JSON reads. Nothing here knows MQTT."""
