"""The MQTT side of the bridge: the broker link (:mod:`bridge.downstream.link`), paho's
speed-ups (:mod:`bridge.downstream.paho_client`) and the topic contract
(:mod:`bridge.downstream.topics`). Nothing here knows the Connector."""
