//! The Prometheus text exposition format (0.0.4): metric families and
//! their samples.

use std::fmt::Write;

/// An exposition being written: metric families, each a `# HELP` and
/// `# TYPE` line followed by its samples.
#[derive(Debug, Default)]
pub struct Exposition(pub String);

impl Exposition {
    /// Starts the family `name` of type `kind` (`gauge`, `counter`) with
    /// its help text.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// Writes one sample of `name` with its labels (values escaped).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{}\"", escape(value)))
                .collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// Escapes a label value: backslash, double quote, line feed.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut out = Exposition(String::new());
        out.family("x_total", "counter", "X.");
        out.sample("x_total", &[("job", "a\"b")], 2.0);
        out.sample("x_total", &[], 0.5);
        assert_eq!(
            out.0,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total{job=\"a\\\"b\"} 2\nx_total 0.5\n"
        );
    }
}
