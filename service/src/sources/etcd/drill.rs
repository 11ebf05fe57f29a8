//! Drilling etcd: restore the snapshot file (its SHA-256 trailer checked),
//! make a data dir with etcd's own tool, start a throwaway member on
//! loopback, and compare its key count and revision with the recorded
//! ones.

use std::sync::Arc;

use serde_json::Value;

use crate::drill::JobRun;
use crate::restore::RestoreError;
use crate::sources::etcd::restore::{
    Keyspace, Member, RestoreTool, ThrowawayEtcd, free_port, restore_data_dir,
    restore_snapshot_file,
};

/// Restores, starts and compares.
pub(crate) async fn verify(run: &mut JobRun<'_>) {
    let (reader, root) = (run.reader, run.entry.snapshot.root);
    let metadata = run.entry.snapshot.metadata.clone();
    let dir = run.scratch.join("snapshot");
    let restored = run
        .step(
            "restore snapshot file",
            restore_snapshot_file(reader, root, &dir, false, Arc::default()),
        )
        .await;
    let Some((file, verified)) = restored else {
        return;
    };
    run.note(format!("{} bytes, SHA-256 trailer verified", verified.size));
    let recorded = metadata["sha256"].as_str();
    if let Some(recorded) = recorded.filter(|r| *r != verified.sha256) {
        run.fail(format!(
            "the restored snapshot's trailer {} differs from the recorded {recorded}",
            verified.sha256
        ));
    }
    let data_dir = run.scratch.join("data");
    let made = run
        .step("restore data dir", async {
            let tool = RestoreTool::find()?;
            let member = Member {
                name: "lifeboat-drill".into(),
                peer_url: format!("http://127.0.0.1:{}", free_port()?),
            };
            restore_data_dir(&tool, &file, &data_dir, &member).await?;
            Ok::<_, RestoreError>((tool, member))
        })
        .await;
    let Some((tool, member)) = made else {
        return;
    };
    run.note(format!("with {}", tool.program().display()));
    let log = run.scratch.join("etcd.log");
    let wait = run.settings.etcd_wait;
    let started = run
        .step(
            "start etcd",
            ThrowawayEtcd::start(&data_dir, &member, &log, wait),
        )
        .await;
    let Some((etcd, keyspace)) = started else {
        return;
    };
    run.note(format!(
        "answering at {}: {} keys at revision {}",
        etcd.client_url(),
        keyspace.key_count,
        keyspace.revision
    ));
    let problems = compare(&metadata, keyspace);
    if !metadata["revision"].is_i64() {
        run.note("no key count recorded (talos-etcd): compared the trailer only");
    } else if problems.is_empty() {
        run.note("as recorded at backup");
    }
    run.fail_on("the restored etcd differs from the backup", &problems);
    drop(etcd);
}

/// The differences between the recorded metadata and what the restored
/// member answers. An inexact revision (writes while the snapshot began)
/// is a range, and then the key count is not comparable.
fn compare(metadata: &Value, got: Keyspace) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(revision) = metadata["revision"].as_i64() else {
        return problems;
    };
    if metadata["revision_exact"].as_bool().unwrap_or(true) {
        if got.revision != revision {
            problems.push(format!(
                "revision {} restored, {revision} recorded",
                got.revision
            ));
        }
        if let Some(keys) = metadata["key_count"]
            .as_i64()
            .filter(|k| *k != got.key_count)
        {
            problems.push(format!("{} keys restored, {keys} recorded", got.key_count));
        }
    } else {
        let max = metadata["revision_max"].as_i64().unwrap_or(revision);
        if got.revision < revision || got.revision > max {
            problems.push(format!(
                "revision {} restored, outside the recorded {revision}..={max}",
                got.revision
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_revisions_compare_keys_too() {
        let got = Keyspace {
            key_count: 10,
            revision: 50,
        };
        let exact = serde_json::json!({"revision": 50, "revision_exact": true, "key_count": 10});
        assert!(compare(&exact, got).is_empty());
        let fewer = serde_json::json!({"revision": 50, "revision_exact": true, "key_count": 11});
        assert_eq!(compare(&fewer, got).len(), 1);
        let range = serde_json::json!({"revision": 45, "revision_exact": false, "revision_max": 52, "key_count": 3});
        assert!(compare(&range, got).is_empty());
        let outside =
            serde_json::json!({"revision": 51, "revision_exact": false, "revision_max": 52});
        assert_eq!(compare(&outside, got).len(), 1);
    }
}
