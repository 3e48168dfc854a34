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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        #[allow(dead_code)]
        mode: String,
    }

    #[test]
    fn empty_json_is_an_empty_table_and_typos_name_the_field() {
        assert_eq!(Config::from_json("").expect("empty"), Config::empty());
        let config = Config::from_json(r#"{"mdoe": "mask"}"#).expect("json");
        let err = config.parse::<Settings>().err().expect("typo refused");
        assert!(err.contains("mdoe"), "{err}");
        assert!(Config::from_json("{").is_err());
    }
}
