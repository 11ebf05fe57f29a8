//! The Kubernetes test API server against the real `kube` client: the
//! protocol the sources and restore rely on works as a real server's does.

use std::time::Duration;

use anyhow::{Context, Result};
use kube::api::{Api, AttachParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::{ApiResource, Discovery, verbs};
use kube::{Client, Config};
use lifeboat_tests::kubernetes::{KubeApiServer, fixtures};
use serde_json::json;
use tokio::io::AsyncReadExt;

async fn client(server: &KubeApiServer, dir: &std::path::Path) -> Result<Client> {
    let path = dir.join("kubeconfig");
    server.write_kubeconfig(&path)?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

async fn fixture_server() -> Result<(tempfile::TempDir, KubeApiServer, Client)> {
    let dir = tempfile::tempdir()?;
    let cluster = fixtures::cluster(&dir.path().join("volumes"))?;
    let server = KubeApiServer::start(cluster.objects).await?;
    let client = client(&server, dir.path()).await?;
    Ok((dir, server, client))
}

#[tokio::test]
async fn discovery_serves_builtin_and_custom_resources_at_preferred_versions() -> Result<()> {
    let (_dir, _server, client) = fixture_server().await?;
    let discovery = Discovery::new(client).run().await?;
    let apps = discovery.get("apps").context("no apps group")?;
    assert!(
        apps.recommended_resources()
            .iter()
            .any(|(ar, caps)| ar.plural == "deployments" && caps.supports_operation(verbs::LIST))
    );
    let autoscaling = discovery
        .get("autoscaling")
        .context("no autoscaling group")?;
    assert_eq!(autoscaling.preferred_version(), Some("v2"));
    let flux = discovery
        .get("kustomize.toolkit.fluxcd.io")
        .context("the Flux CRD's group is not served")?;
    assert_eq!(flux.recommended_resources()[0].0.kind, "Kustomization");
    let core = discovery.get("").context("no core group")?;
    let tokenreviews = discovery
        .get("authentication.k8s.io")
        .context("no authentication group")?;
    assert!(
        !tokenreviews.recommended_resources()[0]
            .1
            .supports_operation(verbs::LIST)
    );
    assert!(
        core.recommended_resources()
            .iter()
            .any(|(ar, _)| ar.plural == "secrets")
    );
    Ok(())
}

#[tokio::test]
async fn lists_page_with_continue_tokens_and_filter_by_labels() -> Result<()> {
    let (_dir, _server, client) = fixture_server().await?;
    let resource = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut names = Vec::new();
    let mut params = ListParams::default().limit(2);
    let mut pages = 0;
    loop {
        let page = api.list(&params).await?;
        pages += 1;
        names.extend(page.items.iter().filter_map(|o| o.metadata.name.clone()));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(pages, 2);
    let labelled = api.list(&ListParams::default().labels("app=web")).await?;
    assert_eq!(labelled.items.len(), 1);
    let not_excluded = api
        .list(&ListParams::default().labels("lifeboat.dev/exclude!=true"))
        .await?;
    assert_eq!(not_excluded.items.len(), 3);
    Ok(())
}

#[tokio::test]
async fn custom_resources_are_refused_until_their_crd_is_established() -> Result<()> {
    let (_dir, server, client) = fixture_server().await?;
    server.set_establish_delay(Duration::from_millis(400));
    let crds = ApiResource::erase::<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    >(&());
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "versions": [{"name": "v1", "served": true, "storage": true}]},
    }))?;
    let apply = PatchParams::apply("lifeboat");
    Api::<DynamicObject>::all_with(client.clone(), &crds)
        .patch("widgets.example.com", &apply, &Patch::Apply(&crd))
        .await?;
    let widgets = ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "apps"}, "spec": {"size": 3},
    }))?;
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "apps", &widgets);
    let early = api.patch("w1", &apply, &Patch::Apply(&widget)).await;
    assert!(
        matches!(&early, Err(kube::Error::Api(status)) if status.code == 404),
        "{early:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.patch("w1", &apply, &Patch::Apply(&widget)).await?;
    let writes = server.writes();
    let statuses: Vec<(String, u16)> = writes
        .iter()
        .map(|w| (w.resource.clone(), w.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("customresourcedefinitions".to_owned(), 201),
            ("widgets".to_owned(), 201)
        ],
        "the first widget apply was refused before the CRD existed in discovery, so it is not recorded as a widget write"
    );
    let missing_namespace: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "example.com/v1", "kind": "Widget",
        "metadata": {"name": "w2", "namespace": "nowhere"},
    }))?;
    let refused = Api::<DynamicObject>::namespaced_with(client, "nowhere", &widgets)
        .patch("w2", &apply, &Patch::Apply(&missing_namespace))
        .await;
    assert!(matches!(&refused, Err(kube::Error::Api(status)) if status.code == 404));
    Ok(())
}

#[tokio::test]
async fn exec_streams_output_and_the_exit_status_over_the_websocket() -> Result<()> {
    let (_dir, server, client) = fixture_server().await?;
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, "databases");
    let params = AttachParams::default()
        .container("postgres")
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut process = pods
        .exec(
            "postgres-0",
            [
                "/bin/sh",
                "-c",
                "echo in $POD_NAME/$CONTAINER; echo oops >&2",
            ],
            &params,
        )
        .await?;
    let mut stdout = String::new();
    process
        .stdout()
        .context("no stdout")?
        .read_to_string(&mut stdout)
        .await?;
    let status = process.take_status().context("no status")?.await;
    assert_eq!(stdout, "in postgres-0/postgres\n");
    assert_eq!(status.and_then(|s| s.status).as_deref(), Some("Success"));

    let mut failing = pods
        .exec("postgres-0", ["/bin/sh", "-c", "exit 3"], &params)
        .await?;
    let status = failing
        .take_status()
        .context("no status")?
        .await
        .context("no status sent")?;
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let execs = server.execs();
    assert_eq!(execs.len(), 2);
    assert_eq!(execs[1].exit_code, Some(3));

    let wrong = pods
        .exec(
            "postgres-0",
            ["true"],
            &AttachParams::default().container("nope"),
        )
        .await;
    assert!(
        matches!(&wrong, Err(kube::Error::Api(status)) if status.code == 400),
        "{:?}",
        wrong.err()
    );
    Ok(())
}
