//! Server-sent events: one event, an incremental parser of upstream bytes, and the framer of
//! Gemini's default streamed JSON array.

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, if any.
    pub event: Option<String>,
    /// The `data:` payload (several data lines joined by `\n`).
    pub data: String,
}

impl SseEvent {
    /// An event with only data.
    pub fn data(data: impl Into<String>) -> Self {
        SseEvent {
            event: None,
            data: data.into(),
        }
    }

    /// A named event.
    pub fn named(event: &str, data: impl Into<String>) -> Self {
        SseEvent {
            event: Some(event.to_string()),
            data: data.into(),
        }
    }

    /// The event on the wire, ending with the blank line.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.data.len() + 32);
        if let Some(event) = &self.event {
            out.push_str("event: ");
            out.push_str(event);
            out.push('\n');
        }
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
        out
    }
}

/// Splits a byte stream into [`SseEvent`]s as bytes arrive (`\n`, `\r\n` or `\r` line ends;
/// comments, `id:` and `retry:` ignored). Keeps only the unfinished line between calls.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    skip_lf: bool,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        SseParser::default()
    }

    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in bytes {
            if self.skip_lf {
                self.skip_lf = false;
                if byte == b'\n' {
                    continue;
                }
            }
            match byte {
                b'\n' | b'\r' => {
                    self.skip_lf = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                other => self.line.push(other),
            }
        }
        events
    }

    /// The stream ended: the last event if it was not closed by a blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            // A last field without its line end still counts.
            let _ = self.line_done(&line);
        }
        self.dispatch()
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            return self.dispatch();
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        let data = self.data.take()?;
        Some(SseEvent { event, data })
    }
}

/// Frames Gemini's default (no `alt=sse`) stream: one JSON array written item by item.
#[derive(Debug, Default)]
pub struct JsonArrayFramer {
    opened: bool,
    items: usize,
}

impl JsonArrayFramer {
    /// A framer before the array opens.
    pub fn new() -> Self {
        JsonArrayFramer::default()
    }

    /// The opening bracket (send it as soon as the stream starts).
    pub fn first(&mut self) -> &'static str {
        self.opened = true;
        "["
    }

    /// One array item (a JSON object), preceded by the separator after the first item (and by
    /// the opening bracket if [`first`](Self::first) was not called).
    pub fn item(&mut self, json: &str) -> String {
        let mut out = String::with_capacity(json.len() + 3);
        if !self.opened {
            out.push_str(self.first());
        }
        if self.items > 0 {
            out.push_str(",\r\n");
        }
        self.items += 1;
        out.push_str(json);
        out
    }

    /// The closing bracket (with the opening one if nothing was sent).
    pub fn end(&mut self) -> String {
        let mut out = String::new();
        if !self.opened {
            out.push_str(self.first());
        }
        out.push(']');
        out
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_line_ends_are_parsed_whole() {
        let mut parser = SseParser::new();
        let mut events = parser.push(b"event: message_start\r\ndata: {\"a\":");
        assert!(events.is_empty());
        events.extend(parser.push(b"1}\r\n\r\n: comment\n\ndata: x\ndata: y\n\ndata: [DONE]"));
        events.extend(parser.finish());
        assert_eq!(
            events,
            vec![
                SseEvent::named("message_start", "{\"a\":1}"),
                SseEvent::data("x\ny"),
                SseEvent::data("[DONE]"),
            ]
        );
    }

    #[test]
    fn encoded_events_parse_back() {
        let events = vec![SseEvent::named("ping", "{}"), SseEvent::data("a\nb")];
        let wire: String = events.iter().map(SseEvent::encode).collect();
        let mut parser = SseParser::new();
        assert_eq!(parser.push(wire.as_bytes()), events);
    }

    #[test]
    fn json_array_framing_separates_items() {
        let mut framer = JsonArrayFramer::new();
        let mut out = framer.first().to_string();
        out.push_str(&framer.item("{\"a\":1}"));
        out.push_str(&framer.item("{\"b\":2}"));
        out.push_str(&framer.end());
        assert_eq!(out, "[{\"a\":1},\r\n{\"b\":2}]");
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed.as_array().unwrap().len(), 2);
        assert_eq!(JsonArrayFramer::new().end(), "[]");
    }
}
