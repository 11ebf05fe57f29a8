//! Which resources the server serves, group by group, at the group's
//! preferred version (a resource only served at another version is taken
//! from the first version that has it). A group that fails to answer (an
//! aggregated API whose backend is down) is reported, not fatal.

use kube::Client;
use kube::discovery::ApiResource;

use super::K8sError;

/// One resource the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedResource {
    /// Group, version, kind and plural.
    pub api: ApiResource,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
    /// The verbs it supports.
    pub verbs: Vec<String>,
}

impl ServedResource {
    /// Whether `verb` is supported.
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.iter().any(|v| v == verb)
    }

    /// `plural` for the core group, else `group/plural`.
    pub fn qualified_name(&self) -> String {
        qualified_name(&self.api.group, &self.api.plural)
    }
}

/// `plural` for the core group, else `group/plural`.
pub fn qualified_name(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{group}/{plural}")
    }
}

/// What discovery found.
#[derive(Debug, Default)]
pub struct Served {
    /// Every resource, core first, then groups in the server's order.
    pub resources: Vec<ServedResource>,
    /// Group versions that did not answer, with the error.
    pub failed: Vec<(String, String)>,
}

/// Asks the server what it serves.
///
/// Fails when the group lists themselves cannot be read.
pub async fn discover(client: &Client) -> Result<Served, K8sError> {
    let mut served = Served::default();
    let core = client
        .list_core_api_versions()
        .await
        .map_err(|e| K8sError::api("listing the core API versions (/api)", e))?;
    let mut group_versions: Vec<(String, Vec<String>)> = vec![(String::new(), core.versions)];
    let groups = client
        .list_api_groups()
        .await
        .map_err(|e| K8sError::api("listing the API groups (/apis)", e))?;
    for group in groups.groups {
        let preferred = group.preferred_version.as_ref().map(|p| p.version.clone());
        let mut versions: Vec<String> = preferred.iter().cloned().collect();
        versions.extend(
            group
                .versions
                .into_iter()
                .map(|v| v.version)
                .filter(|v| Some(v) != preferred.as_ref()),
        );
        group_versions.push((group.name, versions));
    }
    for (group, versions) in group_versions {
        for version in versions {
            let group_version = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            let listed = if group.is_empty() {
                client.list_core_api_resources(&version).await
            } else {
                client.list_api_group_resources(&group_version).await
            };
            let list = match listed {
                Ok(list) => list,
                Err(e) => {
                    served.failed.push((group_version, e.to_string()));
                    continue;
                }
            };
            for resource in list.resources {
                if resource.name.contains('/')
                    || served
                        .resources
                        .iter()
                        .any(|r| r.api.group == group && r.api.plural == resource.name)
                {
                    continue;
                }
                served.resources.push(ServedResource {
                    api: ApiResource {
                        group: group.clone(),
                        version: version.clone(),
                        api_version: group_version.clone(),
                        kind: resource.kind,
                        plural: resource.name,
                    },
                    namespaced: resource.namespaced,
                    verbs: resource.verbs,
                });
            }
        }
    }
    Ok(served)
}
