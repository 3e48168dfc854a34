//! Plugin configuration: the manifest's `[config]` table, handed to the plugin as JSON.

use serde::de::DeserializeOwned;
use serde_json::Value;

/// The `[config]` table of the plugin's manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Config(Value);

impl Config {
    /// Parses the JSON the gateway passes (an empty string is an empty table).
    pub fn from_json(json: &str) -> Result<Self, String> {
        if json.trim().is_empty() {
            return Ok(Config(Value::Object(Default::default())));
        }
        serde_json::from_str(json)
            .map(Config)
            .map_err(|e| format!("config is not valid JSON: {e}"))
    }

    /// A config from a JSON value (for tests).
    pub fn from_value(value: Value) -> Self {
        Config(value)
    }

    /// An empty table.
    pub fn empty() -> Self {
        Config(Value::Object(Default::default()))
    }

    /// The raw JSON value.
    pub fn value(&self) -> &Value {
        &self.0
    }

    /// Deserializes the whole table into `T` (use `#[serde(deny_unknown_fields)]` so a typo in
    /// a manifest is a load error). The error names the offending field.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_value(self.0.clone()).map_err(|e| format!("invalid config: {e}"))
    }
}
