//! SSE framing for the stream guard: finding event boundaries, parsing and re-rendering events.

use bytes::BytesMut;
use serde_json::Value;

/// A parsed SSE event: its non-data lines and its data.
pub(super) struct Event<'a> {
    pub(super) other: Vec<&'a str>,
    pub(super) data: String,
}

pub(super) fn parse_event(raw: &str) -> Event<'_> {
    let mut other = Vec::new();
    let mut data: Option<String> = None;
    for line in raw.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(rest);
                }
                None => data = Some(rest.to_string()),
            }
        } else if !line.is_empty() {
            other.push(line);
        }
    }
    Event {
        other,
        data: data.unwrap_or_default(),
    }
}

pub(super) fn render_event(other: &[&str], data: &Value, out: &mut BytesMut) {
    for line in other {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// The end of the first event in `buf` (after its blank line).
pub(super) fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// The largest char boundary of `s` at or below `at`.
pub(super) fn floor_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_split_on_blank_lines_of_either_style() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: a\n"), None);
    }

    #[test]
    fn parsed_events_keep_their_other_lines() {
        let e = parse_event("event: response.output_text.delta\ndata: {\"a\":1}\n\n");
        assert_eq!(e.other, vec!["event: response.output_text.delta"]);
        assert_eq!(e.data, "{\"a\":1}");
        let mut out = BytesMut::new();
        render_event(&e.other, &json!({"a": 2}), &mut out);
        assert_eq!(
            &out[..],
            b"event: response.output_text.delta\ndata: {\"a\":2}\n\n"
        );
    }

    #[test]
    fn window_cuts_never_split_a_character() {
        assert_eq!(floor_boundary("aé", 2), 1);
        assert_eq!(floor_boundary("abc", 10), 3);
    }
}
