//! The test API server's objects, held in memory like etcd holds them:
//! by resource, namespace and name, with a cluster-wide resource version.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::catalog::Resource;

/// Where an object lives: (group, plural, namespace or "", name).
pub type Key = (String, String, String, String);

/// The objects and the resource-version counter.
#[derive(Debug, Default)]
pub struct Store {
    objects: BTreeMap<Key, Value>,
    revision: u64,
    uids: u64,
}

/// What an apply or create did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new object.
    Created,
    /// An existing object changed (or was applied unchanged).
    Updated,
}

impl Store {
    /// The current resource version.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Every object of `resource` (in `namespace` when given), in key order.
    pub fn list(&self, resource: &Resource, namespace: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((g, p, ns, _), _)| {
                *g == resource.group
                    && *p == resource.plural
                    && namespace.is_none_or(|wanted| ns == wanted)
            })
            .map(|(_, v)| v)
            .collect()
    }

    /// Every object, for inspection by tests.
    pub fn all(&self) -> impl Iterator<Item = (&Key, &Value)> {
        self.objects.iter()
    }

    /// Stores `object` at `key` as the server would on create: new uid,
    /// creation time, generation 1 and resource version; or, when it
    /// exists, merges `object`'s fields into it (server-side apply's effect
    /// for a single manager) and bumps the resource version.
    pub fn apply(&mut self, key: Key, mut object: Value, manager: &str) -> (Written, Value) {
        self.revision += 1;
        let revision = self.revision.to_string();
        let managed = json!([{
            "manager": manager,
            "operation": "Apply",
            "apiVersion": object["apiVersion"],
            "time": "2026-11-26T00:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {}},
        }]);
        if let Some(existing) = self.objects.get_mut(&key) {
            merge(existing, &object);
            let meta = &mut existing["metadata"];
            meta["resourceVersion"] = json!(revision);
            meta["managedFields"] = managed;
            return (Written::Updated, existing.clone());
        }
        self.uids += 1;
        let meta = &mut object["metadata"];
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012}", self.uids));
        meta["resourceVersion"] = json!(revision);
        meta["creationTimestamp"] = json!("2026-11-26T00:00:00Z");
        meta["generation"] = json!(1);
        meta["managedFields"] = managed;
        self.objects.insert(key, object.clone());
        (Written::Created, object)
    }

    /// Replaces the stored object's `status`.
    pub fn set_status(&mut self, key: &Key, status: Value) {
        self.revision += 1;
        let revision = self.revision.to_string();
        if let Some(object) = self.objects.get_mut(key) {
            object["status"] = status;
            object["metadata"]["resourceVersion"] = json!(revision);
        }
    }

    /// Removes the object at `key`.
    pub fn delete(&mut self, key: &Key) -> Option<Value> {
        self.revision += 1;
        self.objects.remove(key)
    }
}

/// Merges `patch` into `target`: maps recursively, `null` removing the
/// field, everything else (lists included) replaced.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (name, value) in patch {
                if value.is_null() {
                    // RFC 7386: null removes the field.
                    target.remove(name);
                    continue;
                }
                match target.get_mut(name) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge(existing, value);
                    }
                    _ => {
                        target.insert(name.clone(), value.clone());
                    }
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// A parsed label selector (`a=b`, `a!=b`, `a`, `!a`, `a in (x,y)`,
/// `a notin (x,y)`, comma-separated).
#[derive(Debug, Default)]
pub struct Selector(Vec<Requirement>);

#[derive(Debug)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Selector {
    /// Parses `text`; `None` when it is malformed.
    pub fn parse(text: &str) -> Option<Self> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let requirement = if let Some((key, rest)) = part.split_once(" notin ") {
                Requirement::NotIn(key.trim().into(), set(rest)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                Requirement::In(key.trim().into(), set(rest)?)
            } else if let Some((key, value)) = part.split_once("!=") {
                Requirement::NotEquals(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                Requirement::Equals(key.trim().into(), value.trim().into())
            } else if let Some(key) = part.strip_prefix('!') {
                Requirement::Absent(key.trim().into())
            } else {
                Requirement::Exists(part.into())
            };
            requirements.push(requirement);
        }
        Some(Self(requirements))
    }

    /// Whether an object with `labels` matches.
    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let label = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::Absent(k) => label(k).is_none(),
            Requirement::In(k, values) => label(k).is_some_and(|l| values.iter().any(|v| v == l)),
            Requirement::NotIn(k, values) => {
                !label(k).is_some_and(|l| values.iter().any(|v| v == l))
            }
        })
    }
}

/// Splits at commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// `(a, b)` as a list.
fn set(text: &str) -> Option<Vec<String>> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).collect())
}
