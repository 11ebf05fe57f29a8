//! A Dockerfile's instructions, continuation lines joined, for checks of
//! what the image holds and how it starts.

use std::path::Path;

use anyhow::{Context, Result};

/// One instruction of a Dockerfile: the keyword (upper case) and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// `FROM`, `COPY`, `RUN`, …
    pub keyword: String,
    /// Everything after the keyword, continuation lines joined.
    pub arguments: String,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// Its instructions in order.
    pub instructions: Vec<Instruction>,
}

impl Dockerfile {
    /// Reads and parses the Dockerfile at `path`.
    ///
    /// Fails when it cannot be read.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Parses Dockerfile text: comments and blank lines dropped, lines
    /// ending in `\` joined with the next.
    pub fn parse(text: &str) -> Self {
        let mut instructions = Vec::new();
        let mut pending = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && pending.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(head) => {
                    pending.push_str(head);
                    pending.push(' ');
                }
                None => {
                    pending.push_str(trimmed);
                    let (keyword, arguments) = pending
                        .split_once(char::is_whitespace)
                        .unwrap_or((&pending, ""));
                    instructions.push(Instruction {
                        keyword: keyword.to_ascii_uppercase(),
                        arguments: arguments.split_whitespace().collect::<Vec<_>>().join(" "),
                    });
                    pending.clear();
                }
            }
        }
        Self { instructions }
    }

    /// The arguments of every `keyword` instruction.
    pub fn all(&self, keyword: &str) -> Vec<&str> {
        self.instructions
            .iter()
            .filter(|i| i.keyword == keyword)
            .map(|i| i.arguments.as_str())
            .collect()
    }

    /// The arguments of the last `keyword` instruction (the one in force).
    ///
    /// Fails when there is none.
    pub fn last(&self, keyword: &str) -> Result<&str> {
        self.all(keyword)
            .last()
            .copied()
            .with_context(|| format!("the Dockerfile has no {keyword}"))
    }

    /// The instructions of the last stage (after the last `FROM`).
    pub fn final_stage(&self) -> Self {
        let start = self
            .instructions
            .iter()
            .rposition(|i| i.keyword == "FROM")
            .unwrap_or(0);
        Self {
            instructions: self.instructions[start..].to_vec(),
        }
    }

    /// The value of `ENV NAME=value` in force.
    pub fn env(&self, name: &str) -> Option<String> {
        self.all("ENV")
            .iter()
            .flat_map(|args| args.split_whitespace())
            .filter_map(|pair| pair.split_once('='))
            .rfind(|(key, _)| *key == name)
            .map(|(_, value)| value.trim_matches('"').to_owned())
    }
}

/// Parses the JSON (exec) form of `ENTRYPOINT`, `CMD` or `VOLUME`.
///
/// Fails when it is not a JSON array of strings.
pub fn exec_form(arguments: &str) -> Result<Vec<String>> {
    serde_json::from_str(arguments)
        .with_context(|| format!("{arguments:?} is not the exec form [\"…\", …]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_lines_join_and_comments_drop() {
        let file = Dockerfile::parse(
            "# c\nFROM a AS b\nRUN x \\\n  && y\n\nENV A=1 B=\"2\"\nFROM c\nCMD [\"serve\"]\n",
        );
        assert_eq!(file.all("RUN"), ["x && y"]);
        assert_eq!(file.env("B").as_deref(), Some("2"));
        assert_eq!(file.final_stage().instructions.len(), 2);
    }
}
