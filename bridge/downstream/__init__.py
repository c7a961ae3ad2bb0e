"""The MQTT side of the bridge: the broker link (:mod:`~bridge.downstream.link`) and its
parts, the outbox with back-pressure (:mod:`~bridge.downstream.outbox`), the ledger of
unacknowledged QoS 1/2 messages (:mod:`~bridge.downstream.ledger`) and the manual acks of
received commands (:mod:`~bridge.downstream.acks`); paho's client, the one place that
touches paho's private state (:mod:`~bridge.downstream.paho_client`); and the topic
contract (:mod:`~bridge.downstream.topics`). Nothing here knows the Connector."""
