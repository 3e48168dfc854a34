//! Helpers for masking: collect the byte ranges to replace, then apply them once.

use std::ops::Range;

/// Replacements over one text. Overlapping ranges are merged (the first label wins), so
/// detectors can report independently.
#[derive(Debug, Clone, Default)]
pub struct Redactions {
    spans: Vec<(Range<usize>, String)>,
}

impl Redactions {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces `range` (byte offsets on char boundaries) with `label`.
    pub fn add(&mut self, range: Range<usize>, label: &str) {
        if range.start < range.end {
            self.spans.push((range, label.to_string()));
        }
    }

    /// Whether nothing is to be replaced.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Whether `range` overlaps a range already added.
    pub fn overlaps(&self, range: &Range<usize>) -> bool {
        self.spans
            .iter()
            .any(|(r, _)| r.start < range.end && range.start < r.end)
    }

    /// `text` with every range replaced. Ranges out of bounds or not on char boundaries are
    /// ignored.
    pub fn apply(&self, text: &str) -> String {
        let mut spans: Vec<&(Range<usize>, String)> = self
            .spans
            .iter()
            .filter(|(r, _)| {
                r.end <= text.len()
                    && text.is_char_boundary(r.start)
                    && text.is_char_boundary(r.end)
            })
            .collect();
        spans.sort_by_key(|(r, _)| (r.start, std::cmp::Reverse(r.end)));
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (range, label) in spans {
            if range.start < at {
                // Overlaps the previous replacement: extend it.
                at = at.max(range.end);
                continue;
            }
            out.push_str(&text[at..range.start]);
            out.push_str(label);
            at = range.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_ranges_merge_into_the_first_label() {
        let mut r = Redactions::new();
        r.add(6..11, "[A]");
        r.add(8..14, "[B]");
        r.add(0..5, "[C]");
        assert_eq!(r.apply("hello world again"), "[C] [A]ain");
    }

    #[test]
    fn ranges_off_char_boundaries_are_ignored() {
        let mut r = Redactions::new();
        r.add(1..2, "x");
        assert_eq!(r.apply("é"), "é");
    }
}
