//! XML 1.0 text and attribute values.

/// Escapes text for XML content and attribute values in either quote:
/// `&`, `<`, `>`, `"` and `'` become entities, and the control characters
/// XML 1.0 cannot hold at all (every one but tab, line feed and carriage
/// return) are dropped.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' | '\t' | '\r' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_and_control_characters_dropped() {
        assert_eq!(escape("a<b & \"c\"\u{1}"), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(
            escape("a<b & \"c\"\u{1}\n'd'>"),
            "a&lt;b &amp; &quot;c&quot;\n&apos;d&apos;&gt;"
        );
    }
}
