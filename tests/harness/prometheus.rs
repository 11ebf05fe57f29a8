//! A real Prometheus server (Debian's `prometheus`) on a free loopback
//! port, scraping targets the way the Prometheus operator configures it
//! from a ServiceMonitor endpoint, and answering PromQL through its HTTP
//! API.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Map, Value, json};

use crate::cli::write_file;
use crate::process::{ServerProcess, free_addr, require_program};
use crate::service::request;

/// A running Prometheus, stopped on drop.
#[derive(Debug)]
pub struct PrometheusServer {
    addr: SocketAddr,
    process: ServerProcess,
}

impl PrometheusServer {
    /// Starts Prometheus in `dir` with one scrape job of `target`,
    /// configured from a ServiceMonitor `endpoint` (its path, honorLabels
    /// and relabelings), scraping every second.
    ///
    /// Fails when `prometheus` is not installed, an endpoint field cannot
    /// be translated, or the server does not become ready.
    pub fn scraping(dir: &Path, target: SocketAddr, endpoint: &Value) -> Result<Self> {
        let program = require_program(
            "prometheus",
            "apt-get install --no-install-recommends prometheus",
        )?;
        let config = json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [scrape_config(endpoint, target)?],
        });
        let config_path = dir.join("prometheus.yml");
        write_file(
            &config_path,
            serde_json::to_string_pretty(&config)?.as_bytes(),
        )?;
        let addr = free_addr()?;
        let data = dir.join("prometheus-data");
        let args = [
            format!("--config.file={}", config_path.display()),
            format!("--storage.tsdb.path={}", data.display()),
            format!("--web.listen-address={addr}"),
        ];
        let process = ServerProcess::spawn(
            "prometheus",
            &program,
            &args,
            &[],
            &dir.join("prometheus.log"),
        )?;
        let mut server = Self { addr, process };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.process.check_running()?;
            if request(self.addr, "GET", "/-/ready", &[]).is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("prometheus not ready\n{}", self.process.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `data` of an API answer to `GET path?query`.
    ///
    /// Fails when the API answers with an error.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value> {
        let encoded = serde_urlencoded::to_string(query)?;
        let answer = request(self.addr, "GET", &format!("{path}?{encoded}"), &[])?;
        let body: Value = serde_json::from_str(&answer.body)
            .with_context(|| format!("{path}: not JSON: {}", answer.body))?;
        ensure!(
            body["status"] == "success",
            "{path} {query:?}: {}",
            answer.body
        );
        Ok(body["data"].clone())
    }

    /// The instant vector `expr` evaluates to now.
    ///
    /// Fails when the query does not parse or is not an instant vector.
    pub fn query(&self, expr: &str) -> Result<Vec<Value>> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        ensure!(
            data["resultType"] == "vector",
            "{expr} is not an instant vector: {data}"
        );
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// The label sets of every series `selector` matches.
    ///
    /// Fails as [`Self::query`] does.
    pub fn series(&self, selector: &str) -> Result<Vec<Map<String, Value>>> {
        let data = self.api("/api/v1/series", &[("match[]", selector)])?;
        Ok(data
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_object().cloned())
            .collect())
    }

    /// Waits until `expr` has a result, at most `timeout`.
    ///
    /// Fails with the server's log when it never has.
    pub fn wait_for(&mut self, expr: &str, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.process.check_running()?;
            let result = self.query(expr)?;
            if !result.is_empty() {
                return Ok(result);
            }
            if Instant::now() > deadline {
                bail!(
                    "{expr} has no result after {timeout:?}\n{}",
                    self.process.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// Prometheus' scrape configuration for a ServiceMonitor endpoint, as the
/// operator writes it, with `target` in place of the Service's discovered
/// pods (the interval is the global one second).
fn scrape_config(endpoint: &Value, target: SocketAddr) -> Result<Value> {
    Ok(json!({
        "job_name": "lifeboat",
        "metrics_path": endpoint["path"].as_str().unwrap_or("/metrics"),
        "honor_labels": endpoint["honorLabels"].as_bool().unwrap_or(false),
        "static_configs": [{"targets": [target.to_string()]}],
        "relabel_configs": relabel_configs(&endpoint["relabelings"])?,
        "metric_relabel_configs": relabel_configs(&endpoint["metricRelabelings"])?,
    }))
}

/// A ServiceMonitor's relabelings (camelCase) as Prometheus' relabel
/// configs (snake_case).
fn relabel_configs(relabelings: &Value) -> Result<Vec<Value>> {
    let mut configs = Vec::new();
    for relabeling in relabelings.as_array().into_iter().flatten() {
        let mut rule = Map::new();
        for (field, value) in relabeling.as_object().context("a relabeling")? {
            let name = match field.as_str() {
                "action" => "action",
                "sourceLabels" => "source_labels",
                "separator" => "separator",
                "targetLabel" => "target_label",
                "regex" => "regex",
                "modulus" => "modulus",
                "replacement" => "replacement",
                other => bail!("relabeling field {other} has no Prometheus counterpart"),
            };
            rule.insert(name.to_owned(), value.clone());
        }
        configs.push(Value::Object(rule));
    }
    Ok(configs)
}
