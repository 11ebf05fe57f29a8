//! The S3 store against real servers: Garage (a real S3 implementation that
//! checks signatures), moto (which honours `If-None-Match: *`), and a proxy
//! that injects faults in front of them.
//!
//! Each test starts its servers, then runs its body in a child process that
//! holds the server's credentials in its environment (see
//! `lifeboat_tests::s3`): the first half of each test runs in the test
//! process, the second (after `child_target`) in the child.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use bytes::Bytes;
use lifeboat::storage::{ObjectStore, S3Options, S3Store, StorageError};
use lifeboat_tests::s3::{child_target, run_in_child};
use lifeboat_tests::{Fault, FaultProxy, GarageServer, MotoServer, S3Target};
use tokio::task::JoinSet;

/// More objects than one ListObjectsV2 page holds (1000).
const MANY: usize = 1005;

#[tokio::test]
async fn garage_round_trip() -> Result<()> {
    let Some(target) = child_target("garage_round_trip")? else {
        let garage = GarageServer::start().await?;
        return run_in_child("garage_round_trip", &garage.target()).await;
    };
    round_trip(&target, &target.options()).await
}

#[tokio::test]
async fn moto_round_trip_with_endpoint_and_region_from_env() -> Result<()> {
    let test = "moto_round_trip_with_endpoint_and_region_from_env";
    let Some(target) = child_target(test)? else {
        let moto = MotoServer::start().await?;
        return run_in_child(test, &moto.target()).await;
    };
    // Endpoint and region come from AWS_ENDPOINT_URL_S3 and AWS_REGION.
    let options = S3Options {
        path_style: true,
        ..S3Options::default()
    };
    round_trip(&target, &options).await
}

#[tokio::test]
async fn moto_put_new_never_overwrites() -> Result<()> {
    let test = "moto_put_new_never_overwrites";
    let Some(target) = child_target(test)? else {
        let moto = MotoServer::start().await?;
        return run_in_child(test, &moto.target()).await;
    };
    let store = S3Store::connect(&target.bucket, "repo", &target.options()).await?;
    store
        .put_new("config", Bytes::from_static(b"first"))
        .await?;
    let again = store.put_new("config", Bytes::from_static(b"second")).await;
    ensure!(
        matches!(&again, Err(StorageError::AlreadyExists { key, .. }) if key == "config"),
        "a second create gave {again:?}"
    );
    ensure!(store.get("config").await? == Bytes::from_static(b"first"));

    // Racing creates of one key: exactly one wins, through clones of one store.
    let store: Arc<dyn ObjectStore> = Arc::new(store);
    let mut racers = JoinSet::new();
    for i in 0..16u8 {
        let store = Arc::clone(&store);
        racers.spawn(async move {
            store
                .put_new("snapshots/race", Bytes::from(vec![i; 1000]))
                .await
        });
    }
    let (mut won, mut refused) = (0, 0);
    while let Some(result) = racers.join_next().await {
        match result? {
            Ok(()) => won += 1,
            Err(StorageError::AlreadyExists { .. }) => refused += 1,
            Err(other) => return Err(other.into()),
        }
    }
    ensure!(
        (won, refused) == (1, 15),
        "{won} creates won and {refused} were refused"
    );
    Ok(())
}

#[tokio::test]
async fn retries_ride_out_throttling_5xx_and_dropped_connections() -> Result<()> {
    let test = "retries_ride_out_throttling_5xx_and_dropped_connections";
    let Some(target) = child_target(test)? else {
        let moto = MotoServer::start().await?;
        let faults = [
            Fault::SlowDown,
            Fault::TooManyRequests,
            Fault::ServiceUnavailable,
            Fault::Disconnect,
        ];
        let proxy = FaultProxy::start(moto.addr(), faults).await?;
        run_in_child(test, &moto.target().via(proxy.endpoint())).await?;
        ensure!(
            proxy.faults_served() == faults.len(),
            "{} faults served",
            proxy.faults_served()
        );
        ensure!(
            proxy.connections_forwarded() >= 1,
            "nothing reached the server"
        );
        return Ok(());
    };
    // Four failures, then the fifth and last attempt succeeds.
    let store = S3Store::connect(&target.bucket, "", &target.options()).await?;
    let data = Bytes::from(random_bytes(256 * 1024));
    store.put_new("data/retried", data.clone()).await?;
    ensure!(store.get("data/retried").await? == data);
    Ok(())
}

#[tokio::test]
async fn retries_are_bounded_and_the_failure_is_named() -> Result<()> {
    let test = "retries_are_bounded_and_the_failure_is_named";
    let Some(target) = child_target(test)? else {
        let moto = MotoServer::start().await?;
        let proxy = FaultProxy::start(moto.addr(), [Fault::ServiceUnavailable; 20]).await?;
        run_in_child(test, &moto.target().via(proxy.endpoint())).await?;
        let served = proxy.faults_served();
        ensure!(
            served == 5,
            "{served} attempts were made, not MAX_ATTEMPTS (5)"
        );
        return Ok(());
    };
    let store = S3Store::connect(&target.bucket, "", &target.options()).await?;
    let started = Instant::now();
    let result = store.put_new("data/doomed", Bytes::from_static(b"x")).await;
    let Err(StorageError::Remote {
        operation, message, ..
    }) = &result
    else {
        anyhow::bail!("expected a remote error, got {result:?}");
    };
    println!(
        "error: {}",
        result
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_default()
    );
    ensure!(*operation == "PutObject");
    ensure!(
        message.contains("HTTP 503") && message.contains("try again later"),
        "{message}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(60),
        "gave up only after {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn garage_refuses_a_wrong_secret_with_a_clear_error() -> Result<()> {
    let test = "garage_refuses_a_wrong_secret_with_a_clear_error";
    let Some(target) = child_target(test)? else {
        let garage = GarageServer::start().await?;
        let wrong = garage.target().with_secret(&"0".repeat(64));
        return run_in_child(test, &wrong).await;
    };
    let store = S3Store::connect(&target.bucket, "repo", &target.options()).await?;
    let started = Instant::now();
    for result in [
        store.put_new("config", Bytes::from_static(b"cfg")).await,
        store.get("config").await.map(drop),
        store.list("").await.map(drop),
    ] {
        let error = result.err().context("a wrong secret was accepted")?;
        println!("error: {error}");
        ensure!(
            matches!(&error, StorageError::Remote { message, .. }
                if message.contains("HTTP 403") && message.contains("AWS_SECRET_ACCESS_KEY")),
            "not a clear credentials error: {error}"
        );
    }
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn an_unreachable_endpoint_is_named() -> Result<()> {
    let test = "an_unreachable_endpoint_is_named";
    let Some(target) = child_target(test)? else {
        // Nothing listens there: every connection is refused.
        let addr = lifeboat_tests::process::free_addr()?;
        let target = S3Target {
            bucket: "nowhere".into(),
            endpoint: format!("http://{addr}"),
            region: "auto".into(),
            path_style: true,
            access_key_id: "id".into(),
            secret_access_key: "secret".into(),
        };
        return run_in_child(test, &target).await;
    };
    let store = S3Store::connect(&target.bucket, "", &target.options()).await?;
    let started = Instant::now();
    let error = store
        .get("config")
        .await
        .err()
        .context("a refused connection gave data")?;
    println!("error: {error}");
    ensure!(
        matches!(&error, StorageError::Remote { message, .. } if message.contains("is the endpoint right")),
        "{error}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Every store operation, under a prefix, seen also from the bucket's root.
async fn round_trip(target: &S3Target, options: &S3Options) -> Result<()> {
    let store = S3Store::connect(&target.bucket, "repo/one", options).await?;
    let root = S3Store::connect(&target.bucket, "", options).await?;
    ensure!(store.url() == format!("s3://{}/repo/one", target.bucket));

    let pack = Bytes::from(random_bytes(3 * 1024 * 1024 + 17));
    store.put_new("config", Bytes::from_static(b"cfg")).await?;
    store.put_new("data/ab/ab01", pack.clone()).await?;
    store
        .put_new("data/00/0002", Bytes::from_static(b"two"))
        .await?;

    ensure!(store.get("config").await? == Bytes::from_static(b"cfg"));
    ensure!(store.get("data/ab/ab01").await? == pack);
    let range = 1_000_000..1_070_000;
    let slice = pack.slice(1_000_000..1_070_000);
    ensure!(store.get_range("data/ab/ab01", range).await? == slice);
    ensure!(store.get_range("config", 1..3).await? == Bytes::from_static(b"fg"));
    ensure!(store.get_range("config", 2..2).await?.is_empty());
    ensure!(root.get("repo/one/config").await? == Bytes::from_static(b"cfg"));

    for missing in [
        store.get("nothing").await,
        store.get_range("nothing", 0..1).await,
    ] {
        ensure!(
            matches!(&missing, Err(StorageError::NotFound { key, .. }) if key == "nothing"),
            "a missing object gave {missing:?}"
        );
    }

    let data = store.list("data/").await?;
    let listed: Vec<_> = data.iter().map(|o| (o.key.as_str(), o.size)).collect();
    ensure!(
        listed == [("data/00/0002", 3), ("data/ab/ab01", pack.len() as u64)],
        "listed {listed:?}"
    );
    let everything: Vec<_> = root.list("").await?.into_iter().map(|o| o.key).collect();
    ensure!(
        everything
            == [
                "repo/one/config",
                "repo/one/data/00/0002",
                "repo/one/data/ab/ab01"
            ]
    );

    // Concurrent creates through clones, and a listing longer than a page.
    let mut uploads = JoinSet::new();
    for batch in 0..8 {
        let store = store.clone();
        uploads.spawn(async move {
            for i in (batch..MANY).step_by(8) {
                store
                    .put_new(&format!("index/{i:05}"), Bytes::from(i.to_string()))
                    .await?;
            }
            Ok::<_, StorageError>(())
        });
    }
    while let Some(done) = uploads.join_next().await {
        done??;
    }
    let index = store.list("index/").await?;
    ensure!(index.len() == MANY, "listed {} of {MANY}", index.len());
    ensure!(
        index.windows(2).all(|w| w[0].key < w[1].key),
        "listing out of order"
    );
    ensure!(index.first().map(|o| o.key.as_str()) == Some("index/00000"));

    store.delete("config").await?;
    ensure!(matches!(
        store.get("config").await,
        Err(StorageError::NotFound { .. })
    ));
    store.delete("config").await?;
    Ok(())
}

fn random_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|_| rand::random::<u8>()).collect()
}
