//! Deleting what a run made: one object by name, or every object of a kind
//! that carries a run's labels.

use kube::api::{Api, DeleteParams, ListParams};

use crate::k8s::K8sError;

/// Deletes one object (its pods with it); one already gone is fine.
pub(crate) async fn delete_named<T>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(), K8sError>
where
    T: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    T::DynamicType: Default,
{
    let kind = T::kind(&T::DynamicType::default()).into_owned();
    let api = Api::<T>::namespaced(client.clone(), namespace);
    delete(&api, &format!("the {kind} {namespace}/{name}"), name).await
}

/// Deletes `name` through `api`; one already gone is fine.
async fn delete<T>(api: &Api<T>, what: &str, name: &str) -> Result<(), K8sError>
where
    T: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(K8sError::api(format!("deleting {what}"), e)),
    }
}

/// The objects `all` lists with `params`, in every namespace (none when
/// the kind is not served); for each whose label `run_label` `doomed`
/// accepts (a missing label counts as `""`), deletes it through
/// `in_namespace`. `what` names the kind in
/// errors (`mover Jobs`).
///
/// Fails when the listing or a delete is refused.
pub(crate) async fn delete_runs<T>(
    all: &Api<T>,
    in_namespace: impl Fn(&str) -> Api<T>,
    (params, run_label): (&ListParams, &str),
    doomed: &impl Fn(&str) -> bool,
    what: &str,
) -> Result<(), K8sError>
where
    T: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let listed = match all.list(params).await {
        Ok(listed) => listed.items,
        // A kind the cluster does not serve (no snapshot CRDs) has none.
        Err(e) if not_found(&e) => return Ok(()),
        Err(e) => return Err(K8sError::api(format!("listing {what}"), e)),
    };
    for object in listed {
        let meta = object.meta();
        let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
            continue;
        };
        let run = meta.labels.as_ref().and_then(|l| l.get(run_label));
        if doomed(run.map(String::as_str).unwrap_or_default()) {
            let api = in_namespace(namespace);
            delete(&api, &format!("{what}: {namespace}/{name}"), name).await?;
        }
    }
    Ok(())
}

/// Whether the API answered 404: no such object, or no such kind served.
pub(super) fn not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}
