//! An attempt's upstream body from the client's own bytes, with only `model` replaced.
//!
//! Re-encoding the decoded body for every attempt escapes every string of the prompt again
//! (about 15 k instructions for a 1 KB chat request, 5% of the governed request path). When the
//! only change the gateway made to the body is the model name, the client's bytes already say
//! everything else: the upstream body is those bytes with the value of the top-level `model`
//! member replaced.
//!
//! The provider must read exactly what the gateway's policies, guardrails and budget holds
//! read. A decoded body keeps the last of two equal keys, while another parser may keep the
//! first, so the bytes are used only when no object at any depth repeats a key (a prompt whose
//! second `content` a guardrail saw must never reach the provider with its first one). Keys
//! written with escapes cannot be compared as bytes: such a body is re-encoded, as is any body
//! the gateway changed in any other way (a capped output, a guardrail's edit) and every Gemini
//! body (its model lives in the URL).

/// Where the value of the top-level `model` member lies in `raw` (a JSON object the gateway
/// decoded without error), or `None` when the bytes cannot stand for the decoded body: a key
/// repeated in any object, a key with an escape, no `model` member, or anything unexpected.
pub fn model_span(raw: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut scan = Scan { raw, at: 0 };
    scan.ws();
    if scan.peek()? != b'{' {
        return None;
    }
    let mut model = None;
    scan.object(0, Some(&mut model))?;
    scan.ws();
    if scan.at != raw.len() {
        return None;
    }
    model
}

/// The upstream body: `raw` with the value at `span` replaced by the JSON string `upstream`.
pub fn with_model(raw: &[u8], span: std::ops::Range<usize>, upstream: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + upstream.len() + 8);
    out.extend_from_slice(&raw[..span.start]);
    // A `&str` always serialises.
    let _ = serde_json::to_writer(&mut out, upstream);
    out.extend_from_slice(&raw[span.end..]);
    out
}

/// Nesting the scanner follows at most (serde_json's own recursion limit is 128).
const MAX_DEPTH: usize = 128;

/// Members of one object the scanner compares for repeats at most: each new key is compared
/// with the earlier ones, so a body of one huge flat object (a client's choice, up to
/// `max_body_bytes`) would cost quadratic time. Larger objects are re-encoded instead.
const MAX_KEYS: usize = 64;

struct Scan<'a> {
    raw: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.raw.get(self.at).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        self.ws();
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// A string at the cursor; its content (between the quotes) and whether it has an escape.
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.at;
        let mut escaped = false;
        loop {
            let stop = memchr::memchr2(b'"', b'\\', self.raw.get(self.at..)?)?;
            self.at += stop;
            if self.raw[self.at] == b'"' {
                self.at += 1;
                return Some((&self.raw[start..self.at - 1], escaped));
            }
            escaped = true;
            // The backslash and the byte it escapes (`\uXXXX` continues as plain bytes).
            self.at += 2;
        }
    }

    /// An object at the cursor, `depth` levels down; at the top level (`model` given) the span
    /// of the `model` member's value is noted. Nested `model` members mean nothing here.
    fn object(
        &mut self,
        depth: usize,
        mut model: Option<&mut Option<std::ops::Range<usize>>>,
    ) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        let mut keys: Vec<&'a [u8]> = Vec::new();
        self.ws();
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            let (key, escaped) = self.string()?;
            if escaped || keys.len() == MAX_KEYS || keys.contains(&key) {
                return None;
            }
            keys.push(key);
            self.eat(b':')?;
            self.ws();
            let start = self.at;
            self.value(depth + 1)?;
            if key == b"model"
                && let Some(slot) = model.as_deref_mut()
            {
                *slot = Some(start..self.at);
            }
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    /// After an item: `true` past a `,` (another item follows), `false` past `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let next = self.peek()?;
        self.at += 1;
        match next {
            b',' => Some(true),
            b if b == close => Some(false),
            _ => None,
        }
    }

    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.object(depth, None),
            b'[' => {
                self.at += 1;
                self.ws();
                if self.peek()? == b']' {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    self.value(depth + 1)?;
                    if !self.more(b']')? {
                        return Some(());
                    }
                }
            }
            // A number or a literal: up to the next delimiter.
            _ => {
                let start = self.at;
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                        break;
                    }
                    self.at += 1;
                }
                (self.at > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spliced(raw: &str, upstream: &str) -> Option<String> {
        let span = model_span(raw.as_bytes())?;
        String::from_utf8(with_model(raw.as_bytes(), span, upstream)).ok()
    }

    #[test]
    fn only_the_top_level_model_is_replaced() {
        let raw = r#" {"messages":[{"role":"user","content":"say \"model\": x","model":"inner"}],
            "model" : "gpt-4o" ,"max_tokens":256,"metadata":{"model":"m"},"n":1e0} "#;
        let out = spliced(raw, "up/\"model\"").expect("spliced");
        assert_eq!(out, raw.replace(r#""gpt-4o""#, r#""up/\"model\"""#));
        let value: serde_json::Value = serde_json::from_str(&out).expect("json");
        assert_eq!(value["model"], "up/\"model\"");
        assert_eq!(value["messages"][0]["model"], "inner");
        assert_eq!(value["metadata"]["model"], "m");
    }

    #[test]
    fn a_model_of_any_json_type_is_replaced_whole() {
        for model in ["null", "7", "[1,{\"a\":2}]", "{\"x\":\"}\"}", "true"] {
            let raw = format!(r#"{{"model":{model},"stream":false}}"#);
            assert_eq!(
                spliced(&raw, "up").as_deref(),
                Some(r#"{"model":"up","stream":false}"#),
                "{raw}"
            );
        }
    }

    #[test]
    fn repeated_or_escaped_keys_at_any_depth_are_never_spliced() {
        for raw in [
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":"a","max_tokens":1,"max_tokens":100000}"#,
            r#"{"model":"a","messages":[{"role":"user","content":"hi","content":"secret"}]}"#,
            r#"{"model":"a","x":{"y":{"z":1,"z":2}}}"#,
            r#"{"mod\u0065l":"a","model":"b"}"#,
            r#"{"model":"a","messages":[{"cont\u0065nt":"x"}]}"#,
        ] {
            assert_eq!(model_span(raw.as_bytes()), None, "{raw}");
        }
        // Equal keys in different objects are fine.
        assert!(
            model_span(br#"{"model":"a","messages":[{"content":"x"},{"content":"y"}]}"#).is_some()
        );
    }

    #[test]
    fn bodies_without_a_model_or_not_objects_are_not_spliced() {
        for raw in [
            r#"{"messages":[]}"#,
            r#"[{"model":"a"}]"#,
            r#"{"model":"a"} {"#,
            r#"{}"#,
            "",
        ] {
            assert_eq!(model_span(raw.as_bytes()), None, "{raw}");
        }
        // An object too large to compare its keys pairwise is re-encoded, at any depth.
        let members = |n: usize| (0..n).map(|i| format!("\"k{i}\":{i}")).collect::<Vec<_>>();
        let flat = format!("{{\"model\":\"a\",{}}}", members(MAX_KEYS - 1).join(","));
        assert!(model_span(flat.as_bytes()).is_some());
        let flat = format!("{{\"model\":\"a\",{}}}", members(MAX_KEYS).join(","));
        assert_eq!(model_span(flat.as_bytes()), None);
        let nested = format!(
            "{{\"model\":\"a\",\"x\":[{{{}}}]}}",
            members(10_000).join(",")
        );
        assert_eq!(model_span(nested.as_bytes()), None);
        let deep = format!(
            "{{\"model\":\"a\",\"x\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(model_span(deep.as_bytes()), None);
    }

    #[test]
    fn the_fuzz_seeds_splice_to_what_re_encoding_sends() {
        // `fuzzing::request_body` asserts it for every body that splices.
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/request_body");
        let mut spliced = 0;
        for entry in std::fs::read_dir(dir).expect("seeds") {
            let data = std::fs::read(entry.expect("seed").path()).expect("seed");
            if data.len() > 1 && model_span(&data[1..]).is_some() {
                spliced += 1;
            }
            crate::fuzzing::request_body(&data);
        }
        assert!(spliced > 0, "no seed exercised the splice");
    }
}
