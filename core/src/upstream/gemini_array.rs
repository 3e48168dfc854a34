//! Gemini's default stream framing: without `?alt=sse`, `streamGenerateContent` answers one
//! JSON array whose elements arrive one by one. Upstream streams are always requested as SSE
//! (so usage can be read event by event); this reframes complete SSE events for clients that
//! asked for the array, without buffering.

use bytes::{Bytes, BytesMut};

/// Reframes SSE events (`data: {...}` blocks) as the elements of a streamed JSON array.
#[derive(Debug, Default)]
pub struct SseToJsonArray {
    opened: bool,
    closed: bool,
}

impl SseToJsonArray {
    /// Complete SSE events in, array text out: `[` before the first element, `,\r\n` between.
    pub fn frame(&mut self, sse: &[u8]) -> Bytes {
        let mut out = BytesMut::new();
        let text = String::from_utf8_lossy(sse);
        for event in text.split("\n\n").flat_map(|e| e.split("\r\n\r\n")) {
            let mut data = String::new();
            for line in event.lines() {
                if let Some(rest) = line.strip_prefix("data:") {
                    data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
                }
            }
            if data.trim().is_empty() {
                continue;
            }
            out.extend_from_slice(if self.opened { b",\r\n" } else { b"[" });
            self.opened = true;
            out.extend_from_slice(data.as_bytes());
        }
        out.freeze()
    }

    /// The end of the array (`[]` when no element came); empty once closed.
    pub fn close(&mut self) -> Bytes {
        if self.closed {
            return Bytes::new();
        }
        self.closed = true;
        Bytes::from_static(if self.opened { b"]" } else { b"[]" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_array_elements_in_order() {
        let mut framer = SseToJsonArray::default();
        let a = framer.frame(b"data: {\"a\":1}\r\n\r\ndata: {\"b\":2}\r\n\r\n");
        let b = framer.frame(b"data: {\"c\":3}\n\n");
        let end = framer.close();
        let text = format!(
            "{}{}{}",
            String::from_utf8_lossy(&a),
            String::from_utf8_lossy(&b),
            String::from_utf8_lossy(&end)
        );
        let parsed: serde_json::Value = serde_json::from_str(&text).expect("json array");
        assert_eq!(parsed, serde_json::json!([{"a": 1}, {"b": 2}, {"c": 3}]));
        assert!(framer.close().is_empty());
    }

    #[test]
    fn an_empty_stream_is_an_empty_array() {
        assert_eq!(SseToJsonArray::default().close(), Bytes::from_static(b"[]"));
    }
}
