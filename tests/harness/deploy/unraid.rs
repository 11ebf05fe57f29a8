//! An Unraid Community Applications template (`<Container>`): the text of
//! its fields (`WebUI`, `Repository`, …) and the attributes of its
//! `<Config>` entries (ports, paths, variables).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use quick_xml::events::{BytesStart, Event};

/// A parsed template.
#[derive(Debug, Clone, Default)]
pub struct Template {
    /// The text of each field below `<Container>`, by element name.
    pub fields: BTreeMap<String, String>,
    /// The attributes of each `<Config>` entry, in order.
    pub configs: Vec<BTreeMap<String, String>>,
}

impl Template {
    /// Reads and parses the template at `path`.
    ///
    /// Fails when it cannot be read, is not XML, or its root is not
    /// `<Container>`.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{} is no Unraid template", path.display()))
    }

    /// Parses template text.
    ///
    /// Fails when it is not XML or its root is not `<Container>`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut reader = quick_xml::Reader::from_str(text);
        let mut template = Self::default();
        let mut path: Vec<String> = Vec::new();
        loop {
            match reader.read_event().context("not valid XML")? {
                Event::Start(element) => {
                    template.enter(&element, path.len())?;
                    path.push(name_of(&element));
                }
                Event::Empty(element) => template.enter(&element, path.len())?,
                Event::End(_) => {
                    path.pop();
                }
                Event::Text(text) if path.len() == 2 => {
                    let field = template.fields.entry(path[1].clone()).or_default();
                    field.push_str(&text.xml_content()?);
                }
                Event::Eof => break,
                _ => {}
            }
        }
        ensure!(
            !template.fields.is_empty() || !template.configs.is_empty(),
            "an empty template"
        );
        Ok(template)
    }

    /// Notes an element opened at `depth` (0: the root).
    fn enter(&mut self, element: &BytesStart<'_>, depth: usize) -> Result<()> {
        let name = name_of(element);
        if depth == 0 {
            ensure!(name == "Container", "the root is <{name}>, not <Container>");
        }
        if depth == 1 && name == "Config" {
            let mut attributes = BTreeMap::new();
            for attribute in element.attributes() {
                let attribute = attribute?;
                let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
                attributes.insert(key, attribute.unescape_value()?.into_owned());
            }
            self.configs.push(attributes);
        }
        Ok(())
    }

    /// The text of the field `name`; empty when absent.
    pub fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// `(Target, Mode)` of every `<Config>` of `Type` `kind` (`Port`,
    /// `Path`, `Variable`).
    pub fn configs_of(&self, kind: &str) -> Vec<(String, String)> {
        self.configs
            .iter()
            .filter(|c| c.get("Type").map(String::as_str) == Some(kind))
            .map(|c| {
                let get = |key: &str| c.get(key).cloned().unwrap_or_default();
                (get("Target"), get("Mode"))
            })
            .collect()
    }
}

fn name_of(element: &BytesStart<'_>) -> String {
    String::from_utf8_lossy(element.name().as_ref()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_configs_are_read_and_other_roots_refused() -> Result<()> {
        let template = Template::parse(
            "<?xml version=\"1.0\"?>\n<Container version=\"2\">\n  <WebUI>http://[IP]:[PORT:8080]/</WebUI>\n  \
             <Config Name=\"p\" Target=\"8080\" Type=\"Port\" Mode=\"tcp\">8080</Config>\n  \
             <Config Name=\"c\" Target=\"/config\" Type=\"Path\" Mode=\"rw\"/>\n</Container>\n",
        )?;
        assert_eq!(template.field("WebUI"), "http://[IP]:[PORT:8080]/");
        assert_eq!(
            template.configs_of("Path"),
            [("/config".to_owned(), "rw".to_owned())]
        );
        assert_eq!(template.configs_of("Port").len(), 1);
        assert!(Template::parse("<Containers><WebUI>x</WebUI></Containers>").is_err());
        Ok(())
    }
}
