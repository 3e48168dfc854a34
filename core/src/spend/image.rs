//! Per-image prices: image generations that report no token usage (DALL-E style) are priced per
//! image from the model's `pricing.images` table, keyed by `SIZE` or `SIZE/QUALITY`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// The size assumed when a request names none (OpenAI's default).
pub const DEFAULT_SIZE: &str = "1024x1024";

/// Nano-USD per image, by `SIZE` or `SIZE/QUALITY`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImagePricing {
    prices: BTreeMap<String, i64>,
}

impl ImagePricing {
    /// A table from `(key, nano-USD per image)` pairs.
    pub fn new(prices: BTreeMap<String, i64>) -> Self {
        Self { prices }
    }

    /// Whether the model prices images at all.
    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }

    /// The price of one image: `SIZE/QUALITY` first, then `SIZE`.
    pub fn price(&self, size: &str, quality: Option<&str>) -> Option<i64> {
        quality
            .and_then(|q| self.prices.get(&format!("{size}/{q}")))
            .or_else(|| self.prices.get(size))
            .copied()
    }

    /// The largest price of `self` and `other` for each key (what a group's hold assumes).
    pub fn worst(&self, other: &ImagePricing) -> ImagePricing {
        let mut prices = self.prices.clone();
        for (key, price) in &other.prices {
            let slot = prices.entry(key.clone()).or_insert(*price);
            *slot = (*slot).max(*price);
        }
        ImagePricing { prices }
    }

    /// The table as JSON (USD per image), for the `model` variable and the admin API.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.prices
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(*v as f64 / 1e9)))
                .collect(),
        )
    }
}

/// The size and quality an image request asks for.
pub fn requested(body: &Map<String, Value>) -> (String, Option<String>) {
    let size = body
        .get("size")
        .and_then(Value::as_str)
        .filter(|s| *s != "auto")
        .unwrap_or(DEFAULT_SIZE)
        .to_string();
    let quality = body
        .get("quality")
        .and_then(Value::as_str)
        .filter(|q| *q != "auto")
        .map(str::to_string);
    (size, quality)
}

/// How many images an answer holds (`data` entries).
pub fn count_in_answer(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Probe {
        data: Option<Vec<serde::de::IgnoredAny>>,
    }
    let probe: Probe = serde_json::from_slice(body).ok()?;
    probe
        .data
        .map(|d| i64::try_from(d.len()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table() -> ImagePricing {
        ImagePricing::new(BTreeMap::from([
            ("1024x1024".to_string(), 40_000_000),
            ("1024x1024/hd".to_string(), 80_000_000),
        ]))
    }

    #[test]
    fn quality_specific_prices_come_first() {
        let t = table();
        assert_eq!(t.price("1024x1024", Some("hd")), Some(80_000_000));
        assert_eq!(t.price("1024x1024", Some("standard")), Some(40_000_000));
        assert_eq!(t.price("1024x1024", None), Some(40_000_000));
        assert_eq!(t.price("256x256", None), None);
    }

    #[test]
    fn requests_default_to_the_standard_size_and_answers_are_counted() {
        let body = json!({"prompt": "x", "quality": "hd"});
        let (size, quality) = requested(body.as_object().unwrap_or(&Map::new()));
        assert_eq!(
            (size.as_str(), quality.as_deref()),
            ("1024x1024", Some("hd"))
        );
        assert_eq!(
            count_in_answer(br#"{"data":[{"b64_json":"a"},{"url":"u"}]}"#),
            Some(2)
        );
        assert_eq!(count_in_answer(b"{}"), None);
    }
}
