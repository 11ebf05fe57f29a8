//! The container image, the Unraid template and the Terraform under
//! `deploy/` against what lifeboat really does:
//!
//! - the Dockerfile builds and copies the workspace's binaries, starts
//!   `lifeboatd serve` on the port it exposes and health-checks, and a
//!   `lifeboatd` started as the image starts it answers on that port;
//! - the Unraid template's WebUI, port, paths and R2 variables are the
//!   image's, and its example config uses only mounted paths;
//! - the R2 variables of the Secret are the ones lifeboatd reads: with only
//!   them it reaches a real S3 server (moto);
//! - the Unraid compose file runs the template's container (image, user,
//!   capabilities, port, mounts, R2 variables, stop timeout), mounts every
//!   path and the Docker socket the example config uses, takes its
//!   variables from the `.env.example` its `.sops.yaml` encrypts, and joins
//!   the network the Alloy scrape block reaches it on;
//! - the example config's appdata job leaves the databases' live data
//!   folders out (a real backup of such a tree);
//! - the Terraform files parse as HCL and lock the repository's prefixes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use lifeboat::config::Config;
use lifeboat::sources::SourceConfig;
use lifeboat_tests::cli::{Installation, binary};
use lifeboat_tests::deploy::dockerfile::{Dockerfile, exec_form};
use lifeboat_tests::deploy::kubernetes::{OVERLAY, rendered};
use lifeboat_tests::deploy::unraid::Template;
use lifeboat_tests::deploy::{deploy_dir, find, r2_variables, round_trip};
use lifeboat_tests::process::free_addr;
use lifeboat_tests::service::request;
use lifeboat_tests::{MotoServer, S3Target};

/// The image as the Dockerfile builds it.
struct Image {
    file: Dockerfile,
    runtime: Dockerfile,
}

impl Image {
    fn load() -> Result<Self> {
        let file = Dockerfile::load(&deploy_dir().join("Dockerfile"))?;
        let runtime = file.final_stage();
        Ok(Self { file, runtime })
    }

    /// The port `LIFEBOAT_LISTEN` makes lifeboatd listen on.
    fn port(&self) -> Result<u16> {
        let listen = self
            .runtime
            .env("LIFEBOAT_LISTEN")
            .context("ENV LIFEBOAT_LISTEN")?;
        let addr: std::net::SocketAddr = listen.parse()?;
        ensure!(
            addr.ip().is_unspecified(),
            "the image must listen on all interfaces"
        );
        Ok(addr.port())
    }
}

/// The names of the workspace's binaries.
fn workspace_binaries() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for manifest in ["service/Cargo.toml", "restore-cli/Cargo.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(manifest);
        let value: toml::Value = toml::from_str(&std::fs::read_to_string(&path)?)?;
        for bin in value["bin"].as_array().context("[[bin]]")? {
            names.push(bin["name"].as_str().context("bin name")?.to_owned());
        }
    }
    Ok(names)
}

#[test]
fn the_image_holds_the_binaries_and_starts_lifeboatd_on_its_port() -> Result<()> {
    let image = Image::load()?;
    let port = image.port()?;

    // Binaries: built by name, copied into the runtime image, one the entry point.
    let binaries = workspace_binaries()?;
    let build = image.file.all("RUN").join(" ");
    let copies = image.runtime.all("COPY").join(" ");
    for name in &binaries {
        ensure!(
            build.contains(&format!("--bin {name}")),
            "the build skips {name}"
        );
        ensure!(
            copies.contains(&format!("/out/{name}")),
            "the image lacks {name}"
        );
    }
    // What restores and drills run besides lifeboat: etcd's tools and a
    // throwaway etcd, PostgreSQL's client programs.
    for tool in [
        "/usr/local/bin/etcd ",
        "/usr/local/bin/etcdutl ",
        "/usr/local/bin/etcdctl ",
    ] {
        ensure!(copies.contains(tool), "the image lacks {tool}");
    }
    for (package, why) in [
        (" postgresql-client ", "pg_dump and pg_restore"),
        (" libvirt0 ", "libvirt, which `lifeboat rebuild` links"),
        (" openssh-client ", "ssh for qemu+ssh:// libvirt URIs"),
    ] {
        ensure!(
            image.runtime.all("RUN").iter().any(|r| r.contains(package)),
            "the image lacks {why}"
        );
    }
    let entrypoint = exec_form(image.runtime.last("ENTRYPOINT")?)?;
    ensure!(entrypoint == ["/usr/local/bin/lifeboatd"], "{entrypoint:?}");
    let cmd = exec_form(image.runtime.last("CMD")?)?;
    ensure!(cmd == ["serve"], "{cmd:?}");
    ensure!(
        image.runtime.last("EXPOSE")? == port.to_string(),
        "EXPOSE {port}"
    );
    let health = image.runtime.last("HEALTHCHECK")?;
    ensure!(
        health.contains(&format!("http://127.0.0.1:{port}/healthz")),
        "the health check asks /healthz on {port}: {health}"
    );
    let tool = health
        .split_once("CMD")
        .and_then(|(_, c)| exec_form(c.trim()).ok())
        .and_then(|c| c.first().cloned())
        .context("HEALTHCHECK CMD in exec form")?;
    ensure!(
        image
            .runtime
            .all("RUN")
            .iter()
            .any(|r| r.contains(&format!(" {tool} "))),
        "the health check's {tool} is not installed in the image"
    );
    let user = image.runtime.last("USER")?;
    ensure!(
        !user.starts_with("root") && !user.starts_with('0'),
        "USER {user}"
    );
    let workdir = image.runtime.last("WORKDIR")?;
    ensure!(
        exec_form(image.runtime.last("VOLUME")?)? == [workdir],
        "VOLUME {workdir}"
    );
    for source in copies
        .split_whitespace()
        .filter(|w| w.starts_with("schedules"))
    {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(source);
        ensure!(path.exists(), "COPY {source}: not in the repository");
    }

    // lifeboatd started as the image starts it: in an empty /config, with
    // the image's CMD and LIFEBOAT_LISTEN (on loopback here) — it writes
    // its starter config and answers /healthz on the port it was given.
    let workspace = tempfile::tempdir()?;
    let addr = free_addr()?;
    let mut child = Command::new(binary("lifeboatd")?)
        .args(&cmd)
        .current_dir(workspace.path())
        .env("LIFEBOAT_LISTEN", addr.to_string())
        .env_remove("LIFEBOAT_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let answered = poll(Duration::from_secs(60), || {
        Ok(request(addr, "GET", "/healthz", &[])
            .ok()
            .filter(|r| r.status == 200))
    });
    stop(&mut child)?;
    answered.context("lifeboatd as the image starts it did not answer /healthz")?;
    ensure!(
        workspace.path().join("lifeboat.toml").is_file(),
        "the first start writes /config/lifeboat.toml"
    );
    Ok(())
}

#[test]
fn the_unraid_template_names_the_image_port_paths_and_r2_variables() -> Result<()> {
    let image = Image::load()?;
    let port = image.port()?;
    let workdir = image.runtime.last("WORKDIR")?;

    // The Unraid template: the WebUI on the port, /config, R2 variables.
    let template = Template::load(&deploy_dir().join("unraid/lifeboat.xml"))?;
    let child = |name: &str| template.field(name);
    ensure!(
        child("WebUI") == format!("http://[IP]:[PORT:{port}]/"),
        "WebUI {}",
        child("WebUI")
    );
    ensure!(
        child("Repository").starts_with("ghcr.io/"),
        "the image is on GHCR"
    );
    let of_type = |kind: &str| template.configs_of(kind);
    ensure!(
        of_type("Port") == [(port.to_string(), "tcp".to_owned())],
        "ports: {:?}",
        template.configs_of("Port")
    );
    let paths = of_type("Path");
    ensure!(
        paths.contains(&(workdir.to_owned(), "rw".to_owned())),
        "{workdir} rw"
    );
    for (target, mode) in &paths {
        ensure!(
            target == workdir || mode == "ro",
            "{target} must be read-only"
        );
    }
    let variables: BTreeSet<String> = of_type("Variable").into_iter().map(|(t, _)| t).collect();
    ensure!(
        variables.is_superset(&r2_variables()),
        "R2 variables: {variables:?}"
    );
    let extra = child("ExtraParams");
    ensure!(
        extra.contains("--stop-timeout=30"),
        "stop timeout above shutdown_grace"
    );

    // The example config for Unraid loads, and uses only mounted paths.
    // Read as the container reads it: /config/lifeboat.toml.
    let example = std::fs::read_to_string(deploy_dir().join("unraid/lifeboat.toml"))?;
    let config = Config::parse(&example, &Path::new(workdir).join("lifeboat.toml"))?;
    ensure!(
        config.service.listen.port() == port,
        "the Unraid config's port"
    );
    let mounted = |path: &Path| paths.iter().any(|(target, _)| path.starts_with(target));
    let state = config.state_dir.clone().context("state_dir")?;
    ensure!(
        mounted(&state) && mounted(&config.repository.service_identity),
        "state and keys in {workdir}"
    );
    for job in &config.jobs {
        let used: Vec<PathBuf> = match &job.source {
            SourceConfig::Directory(d) => d.folders().into_iter().map(|f| f.path).collect(),
            SourceConfig::TalosConfig(t) => t.dir.iter().cloned().collect(),
            SourceConfig::Postgres(p) => p.password_file.iter().cloned().collect(),
            _ => Vec::new(),
        };
        for path in used {
            ensure!(
                mounted(&path),
                "job {}: {} is not mounted",
                job.name,
                path.display()
            );
        }
    }
    Ok(())
}

/// The compose file's `lifeboat` service.
fn compose_service() -> Result<serde_yaml_ng::Value> {
    let text = std::fs::read_to_string(deploy_dir().join("unraid/docker-compose.yml"))?;
    let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
    Ok(compose["services"]["lifeboat"].clone())
}

/// The strings of a compose list (`volumes`, `ports`, `cap_add`, …).
fn strings(value: &serde_yaml_ng::Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_compose_file_runs_the_template_container_with_what_the_example_config_needs() -> Result<()> {
    let image = Image::load()?;
    let port = image.port()?;
    let workdir = image.runtime.last("WORKDIR")?;
    let template = Template::load(&deploy_dir().join("unraid/lifeboat.xml"))?;
    let service = compose_service()?;
    let text = |key: &str| service[key].as_str().unwrap_or_default().to_owned();

    // The same container as the template's.
    ensure!(
        text("image") == template.field("Repository"),
        "compose image {} vs template {}",
        text("image"),
        template.field("Repository")
    );
    let extra = template.field("ExtraParams");
    ensure!(
        extra.contains(&format!("--user={}", text("user"))),
        "user {}",
        text("user")
    );
    ensure!(
        strings(&service["cap_drop"]) == ["ALL"],
        "every capability dropped"
    );
    for capability in strings(&service["cap_add"]) {
        ensure!(
            extra.contains(&format!("--cap-add={capability}")),
            "{capability} as in the template"
        );
    }
    ensure!(
        text("stop_grace_period") == "30s" && extra.contains("--stop-timeout=30"),
        "30 s to stop in both"
    );
    ensure!(
        strings(&service["ports"]) == [format!("{port}:{port}")],
        "ports: {:?}",
        service["ports"]
    );

    // Mounts: the template's paths, /config writable, the rest read-only.
    let template_paths: BTreeMap<String, String> =
        template.configs_of("Path").into_iter().collect();
    let mut mounts = BTreeMap::new();
    for volume in strings(&service["volumes"]) {
        let parts: Vec<&str> = volume.split(':').collect();
        let (host, target, mode) = match parts.as_slice() {
            [host, target] => (*host, *target, "rw"),
            [host, target, mode] => (*host, *target, *mode),
            _ => anyhow::bail!("volume {volume:?}"),
        };
        ensure!(host.starts_with('/'), "{volume}: a host path");
        ensure!(
            template_paths.get(target).map(String::as_str) == Some(mode),
            "{volume}: the template mounts {target} as {:?}",
            template_paths.get(target)
        );
        ensure!(
            (target == workdir) == (mode == "rw"),
            "{volume}: only {workdir} is writable"
        );
        mounts.insert(target.to_owned(), host.to_owned());
    }
    ensure!(
        mounts.get(workdir).map(String::as_str) == Some("/mnt/user/appdata/lifeboat"),
        "{workdir} from the appdata share"
    );

    // Variables: the R2 ones, from .env.example, which .sops.yaml encrypts.
    let environment = strings(&service["environment"]);
    let names: BTreeSet<String> = environment
        .iter()
        .filter_map(|e| e.split('=').next().map(str::to_owned))
        .collect();
    ensure!(
        names.is_superset(&r2_variables()),
        "R2 variables: {names:?}"
    );
    let example = std::fs::read_to_string(deploy_dir().join("unraid/.env.example"))?;
    let given: BTreeSet<&str> = example
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim()))
        .collect();
    let referenced = regex::Regex::new(r"\$\{([A-Z0-9_]+)")?;
    for reference in environment.iter().flat_map(|e| referenced.captures_iter(e)) {
        ensure!(
            given.contains(&reference[1]),
            "{} is in .env.example",
            &reference[1]
        );
    }
    let sops: serde_yaml_ng::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        deploy_dir().join("unraid/.sops.yaml"),
    )?)?;
    let rule = sops["creation_rules"][0]["path_regex"]
        .as_str()
        .context(".sops.yaml path_regex")?;
    ensure!(
        regex::Regex::new(rule)?.is_match(".enc.env") && !regex::Regex::new(rule)?.is_match(".env"),
        "the SOPS rule encrypts .enc.env and nothing else"
    );

    // The example config: every path it reads is mounted, and the Docker
    // socket of its container jobs too.
    let config_text = std::fs::read_to_string(deploy_dir().join("unraid/lifeboat.toml"))?;
    let config = Config::parse(&config_text, &Path::new(workdir).join("lifeboat.toml"))?;
    let mounted = |path: &Path| mounts.keys().any(|target| path.starts_with(target));
    let mut containers = Vec::new();
    for job in &config.jobs {
        let used: Vec<PathBuf> = match &job.source {
            SourceConfig::Directory(d) => d.folders().into_iter().map(|f| f.path).collect(),
            SourceConfig::TalosConfig(t) => t.dir.iter().cloned().collect(),
            SourceConfig::Postgres(p) => {
                containers.extend(p.container.clone());
                let socket = p.container.as_ref().map(|_| p.docker_socket.clone());
                p.password_file.iter().cloned().chain(socket).collect()
            }
            _ => Vec::new(),
        };
        for path in used {
            ensure!(
                mounted(&path),
                "job {}: {} is not mounted in docker-compose.yml",
                job.name,
                path.display()
            );
        }
    }
    ensure!(
        containers == ["gitea_postgres", "vaultwarden_postgres", "immich_postgres"],
        "the example dumps the user's database containers: {containers:?}"
    );

    // Alloy reaches it by name on the network both join.
    let alloy = std::fs::read_to_string(deploy_dir().join("unraid/alloy/lifeboat.alloy"))?;
    ensure!(
        alloy.contains(&format!("\"{}:{port}\"", text("container_name")))
            && alloy.contains("metrics_path    = \"/metrics\"")
            && alloy.contains("prometheus.relabel.add_labels.receiver"),
        "the scrape block targets {}:{port}/metrics and adds the cluster label",
        text("container_name")
    );
    ensure!(
        strings(&service["networks"]) == ["alloy"],
        "lifeboat joins Alloy's network"
    );
    let text = std::fs::read_to_string(deploy_dir().join("unraid/docker-compose.yml"))?;
    let compose: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)?;
    ensure!(
        compose["networks"]["alloy"]["name"] == "alloy-internal"
            && compose["networks"]["alloy"]["external"] == true,
        "the network is Alloy's own alloy-internal"
    );
    Ok(())
}

#[test]
fn the_example_appdata_job_leaves_live_database_folders_out() -> Result<()> {
    let config_text = std::fs::read_to_string(deploy_dir().join("unraid/lifeboat.toml"))?;
    let config = Config::parse(&config_text, Path::new("/config/lifeboat.toml"))?;
    let appdata = config
        .jobs
        .iter()
        .find(|job| job.name == "appdata")
        .context("an appdata job")?;
    let SourceConfig::Directory(source) = &appdata.source else {
        anyhow::bail!("appdata is a directory job");
    };
    // The user's appdata as it is laid out, in a folder of its own.
    let installation = Installation::local()?;
    let tree = installation.path("appdata");
    for (file, body) in [
        ("gitea/postgres/PG_VERSION", "17"),
        ("gitea/postgres/base/1/1259", "live table"),
        ("gitea/gitea/conf/app.ini", "[server]"),
        ("immich/postgres/PG_VERSION", "14"),
        ("vaultwarden/data/config.json", "{}"),
        ("vaultwarden/postgres/PG_VERSION", "16"),
    ] {
        let path = tree.join(file);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        std::fs::write(path, body)?;
    }
    let excludes = toml::Value::try_from(&source.exclude)?;
    let job = format!(
        "{{ kind = \"directory\", paths = [{:?}], exclude = {excludes} }}",
        tree.display().to_string()
    );
    installation.write_config(&[], &[("appdata", &job)])?;
    installation.backup("appdata")?;
    let restored = installation.path("restored");
    installation
        .restore(&installation.restore_key(), "latest:appdata", &restored)?
        .ok()?;
    let inside = restored.join(tree.strip_prefix("/")?);
    for kept in ["gitea/gitea/conf/app.ini", "vaultwarden/data/config.json"] {
        ensure!(inside.join(kept).is_file(), "{kept} is backed up");
    }
    for app in ["gitea", "immich", "vaultwarden"] {
        ensure!(
            !inside.join(app).join("postgres").exists(),
            "{app}/postgres is left to the database job"
        );
    }
    Ok(())
}

/// Calls `probe` every 100 ms until it returns a value.
fn poll<T>(timeout: Duration, mut probe: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        ensure!(Instant::now() < deadline, "nothing within {timeout:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops `child` and waits for it.
fn stop(child: &mut Child) -> Result<()> {
    child.kill()?;
    child.wait()?;
    Ok(())
}

#[tokio::test]
async fn the_r2_variables_alone_reach_a_real_s3_server() -> Result<()> {
    let moto = MotoServer::start().await?;
    let target: S3Target = moto.target();
    let installation = Installation::local()?;
    // The repository as the manifests give it: the bucket in the URL, the
    // endpoint and the credentials only in the environment.
    let config = format!(
        "state_dir = \"state\"\n[repository]\nurl = \"s3://{}/deploy\"\nservice_identity = \"keys/service.key\"\ns3 = {{ path_style = {} }}\n",
        target.bucket, target.path_style
    );
    std::fs::write(installation.config(), config)?;
    let values: BTreeMap<&str, String> = BTreeMap::from([
        ("AWS_ACCESS_KEY_ID", target.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY", target.secret_access_key.clone()),
        ("AWS_ENDPOINT_URL_S3", target.endpoint.clone()),
    ]);
    let documents = rendered(OVERLAY)?;
    let secret: Secret = round_trip(find(&documents, "Secret", "lifeboat-r2")?)?;
    let addr = free_addr()?;
    let mut command = installation.command("lifeboatd")?;
    command
        .args([
            "serve",
            "--config",
            "lifeboat.toml",
            "--listen",
            &addr.to_string(),
        ])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for name in secret.string_data.unwrap_or_default().keys() {
        let value = values
            .get(name.as_str())
            .with_context(|| format!("the Secret sets {name}, which lifeboatd does not read"))?;
        command.env(name, value);
    }
    let mut child = command.spawn()?;
    let ready = poll(Duration::from_secs(120), || {
        let response = request(addr, "GET", "/readyz", &[]).ok();
        Ok(response.filter(|r| r.status == 200).map(|r| r.body))
    });
    stop(&mut child)?;
    let body = ready.with_context(|| format!("lifeboatd never reached {}", target.endpoint))?;
    ensure!(body.contains("reachable"), "{body}");
    Ok(())
}

#[test]
fn terraform_files_parse_and_lock_the_repository() -> Result<()> {
    let mut files = 0;
    let mut blocks: Vec<hcl::Block> = Vec::new();
    for folder in ["terraform/r2-bucket", "terraform/example"] {
        for entry in std::fs::read_dir(deploy_dir().join(folder))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tf") {
                let text = std::fs::read_to_string(&path)?;
                let body: hcl::Body = hcl::from_str(&text)
                    .with_context(|| format!("{} is not valid HCL", path.display()))?;
                blocks.extend(body.into_blocks());
                files += 1;
            }
        }
    }
    ensure!(files >= 5, "only {files} .tf files");
    let resources: BTreeSet<String> = blocks
        .iter()
        .filter(|b| b.identifier.as_str() == "resource")
        .filter_map(|b| b.labels.first().map(|l| l.as_str().to_owned()))
        .collect();
    for wanted in [
        "cloudflare_r2_bucket",
        "cloudflare_r2_bucket_lock",
        "cloudflare_r2_bucket_lifecycle",
        "cloudflare_account_token",
    ] {
        ensure!(
            resources.contains(wanted),
            "no resource {wanted}: {resources:?}"
        );
    }
    let variables: BTreeSet<String> = blocks
        .iter()
        .filter(|b| b.identifier.as_str() == "variable")
        .filter_map(|b| b.labels.first().map(|l| l.as_str().to_owned()))
        .collect();
    ensure!(
        variables.contains("lock_days"),
        "lock days are configurable"
    );
    // The lock covers the prefixes that hold data, snapshots, config and
    // keys as FORMAT.md names them.
    let text = std::fs::read_to_string(deploy_dir().join("terraform/r2-bucket/main.tf"))?;
    for prefix in ["data/", "snapshots/", "config\"", "keys\""] {
        ensure!(
            text.contains(&format!("\"${{local.prefix}}{prefix}")),
            "the bucket lock does not name {prefix}"
        );
    }
    let format = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../service/FORMAT.md"),
    )?;
    for object in ["`data/<hh>/<id>`", "`snapshots/<id>`", "`config`", "`keys`"] {
        ensure!(
            format.contains(object),
            "FORMAT.md no longer names {object}"
        );
    }
    Ok(())
}
