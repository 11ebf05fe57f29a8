//! The form objects are stored in: what the server owns stripped, keys in a
//! stable order, as YAML. The same object always gives the same bytes, so
//! unchanged objects deduplicate.

use serde_json::Value;

/// Metadata fields the server sets and a restore must not send back.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

/// Fields put first, in this order; the rest follow sorted.
const LEADING_KEYS: &[&str] = &["apiVersion", "kind", "metadata"];

/// Strips what the server owns from `object` (`status` too unless
/// `keep_status`), and sets its `apiVersion` and `kind` (list items of
/// built-in kinds come without them).
pub fn strip(object: &mut Value, api_version: &str, kind: &str, keep_status: bool) {
    let Some(map) = object.as_object_mut() else {
        return;
    };
    map.insert("apiVersion".into(), Value::String(api_version.into()));
    map.insert("kind".into(), Value::String(kind.into()));
    if !keep_status {
        map.remove("status");
    }
    if let Some(metadata) = map.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in SERVER_METADATA {
            metadata.remove(*field);
        }
    }
}

/// The object as YAML with `apiVersion`, `kind` and `metadata` first and
/// every other key sorted.
pub fn to_yaml(object: &Value) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(&ordered(object, true))
}

/// `value` as a YAML value with keys in the canonical order.
fn ordered(value: &Value, top: bool) -> serde_yaml_ng::Value {
    use serde_yaml_ng::Value as Yaml;
    match value {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Bool(*b),
        Value::Number(n) => serde_yaml_ng::to_value(n).unwrap_or(Yaml::Null),
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(items) => Yaml::Sequence(items.iter().map(|v| ordered(v, false)).collect()),
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| {
                let rank = if top {
                    LEADING_KEYS
                        .iter()
                        .position(|l| l == k)
                        .unwrap_or(LEADING_KEYS.len())
                } else {
                    0
                };
                (rank, k.as_str())
            });
            let mut mapping = serde_yaml_ng::Mapping::new();
            for key in keys {
                mapping.insert(Yaml::String(key.clone()), ordered(&map[key], false));
            }
            Yaml::Mapping(mapping)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn server_fields_go_and_keys_come_in_a_stable_order() {
        let mut object = json!({
            "spec": {"b": 1, "a": [ {"z": 1, "y": 2} ]},
            "status": {"ready": true},
            "metadata": {"name": "web", "uid": "u", "resourceVersion": "9", "managedFields": [],
                "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 4, "labels": {"app": "web"},
                "ownerReferences": [{"kind": "Deployment", "name": "x"}]},
        });
        strip(&mut object, "apps/v1", "ReplicaSet", false);
        let yaml = to_yaml(&object).unwrap_or_default();
        assert_eq!(
            yaml,
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata:\n  labels:\n    app: web\n  name: web\n  \
             ownerReferences:\n  - kind: Deployment\n    name: x\nspec:\n  a:\n  - y: 2\n    z: 1\n  b: 1\n"
        );
    }

    #[test]
    fn status_is_kept_when_asked() {
        let mut object = json!({"metadata": {"name": "n"}, "status": {"phase": "Bound"}});
        strip(&mut object, "v1", "PersistentVolume", true);
        assert_eq!(object["status"]["phase"], "Bound");
    }
}
