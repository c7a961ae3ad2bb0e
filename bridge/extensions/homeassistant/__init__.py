"""Home Assistant MQTT discovery: the configs as pure functions
(:mod:`~bridge.extensions.homeassistant.discovery`) and the extension that publishes them
(:mod:`~bridge.extensions.homeassistant.extension`)."""
