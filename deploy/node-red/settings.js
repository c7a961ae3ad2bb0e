/**
 * Node-RED settings for running the connector-bridge demo flow headless (no editor).
 *
 *   CONNECTOR_MQTT_HOST=127.0.0.1 CONNECTOR_MQTT_PORT=1883 \
 *     node-red --settings settings.js --userDir <a writable directory> flow.json
 *
 * The flow reads the broker address from CONNECTOR_MQTT_HOST / CONNECTOR_MQTT_PORT
 * (default localhost:1883, see the env of the flow's tab). Node-RED listens on
 * NODE_RED_HOST:NODE_RED_PORT (default 127.0.0.1:1880) for its admin HTTP API only:
 * `POST /inject/<inject node id>` presses an inject button, which is how the tests
 * switch the light. Nothing here talks to the internet: telemetry and the update
 * check are off.
 */
module.exports = {
    uiHost: process.env.NODE_RED_HOST || "127.0.0.1",
    uiPort: Number(process.env.NODE_RED_PORT || 1880),
    flowFile: "flow.json",
    flowFilePretty: true,
    credentialSecret: false,
    disableEditor: true,
    diagnostics: { enabled: false, ui: false },
    runtimeState: { enabled: false, ui: false },
    telemetry: { enabled: false, updateNotification: false },
    externalModules: {
        autoInstall: false,
        palette: { allowInstall: false },
        modules: { allowInstall: false },
    },
    logging: {
        console: { level: process.env.NODE_RED_LOG_LEVEL || "info", metrics: false, audit: false },
    },
    functionExternalModules: false,
    debugMaxLength: 1000,
};
