//! `lifeboatd serve`: load and check the whole configuration (refusing to
//! start on any error), open the history, start the schedules, the RPO
//! watch and the HTTP server, and on a shutdown signal stop in order: no
//! new runs, running ones finish within the grace period (or are stopped,
//! leaving no snapshot), then the HTTP server.

use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::auth::{ApiToken, TokenError};
use super::{AppState, app};
use crate::config::{Config, ConfigError};
use crate::daemon::scheduler::{SchedulerError, make_up_missed_runs};
use crate::daemon::status::watch_rpo;
use crate::daemon::{Scheduler, Service};
use crate::errors::describe;
use crate::state::{History, HistoryError};

/// How the service is started.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `lifeboat.toml`.
    pub config: PathBuf,
    /// Listen here instead of `[service] listen`.
    pub listen: Option<SocketAddr>,
    /// Write a starter configuration when `config` does not exist (only
    /// when the operator named no file, so a mistyped path is an error
    /// rather than a new, empty repository).
    pub create_starter: bool,
}

/// Why the service could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The configuration is invalid; nothing was started.
    #[error("{0}; lifeboatd does not start with an invalid configuration")]
    Config(#[from] ConfigError),
    /// The API token file is unusable.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The run history cannot be opened.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The scheduler did not start.
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    /// The address is taken or not allowed.
    #[error(
        "cannot listen on {addr}: {source}; free the port, or set `listen` in [service] or --listen"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server stopped by itself.
    #[error("the HTTP server stopped: {0}")]
    Http(String),
}

/// Runs the service until `shutdown` resolves, then stops it cleanly.
///
/// Fails before anything runs when the configuration, the token file or
/// the history is unusable or the address cannot be bound; fails later
/// only when the HTTP server dies.
pub async fn serve(
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    if options.create_starter && Config::write_starter(&options.config)? {
        tracing::info!(
            "wrote a starter configuration to {}: it backs up the folder `data` beside it into \
             the folder `repo`; edit it and restart to back up what you need",
            options.config.display()
        );
    }
    let config = Config::load_with_schedules(&options.config)?;
    let listen = options.listen.unwrap_or(config.service.listen);
    let token = ApiToken::load_or_create(&config.token_file())?;
    let history = History::open(&config.state_folder())?;
    let interrupted = history.interrupt_unfinished()?;
    if interrupted > 0 {
        tracing::warn!(
            "{interrupted} run(s) were cut short when the service last stopped; they wrote no snapshot"
        );
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: listen,
            source,
        })?;
    let grace = config.service.shutdown_grace;
    tracing::info!(
        "{} jobs from {} and its schedules folder",
        config.jobs.len(),
        options.config.display()
    );
    let service = Service::new(config, history);
    let scheduler = Scheduler::start(&service).await?;
    service.start_wal_receivers();
    tokio::spawn(watch_rpo(service.clone()));
    tokio::spawn(warm_up(service.clone()));
    let addr = listener.local_addr().unwrap_or(listen);
    tracing::info!(
        "serving http://{addr}/ — status page at /, metrics at /metrics, API at /api/v1, health at /healthz and /readyz"
    );
    let (stop_http, stopped) = tokio::sync::oneshot::channel::<()>();
    let protect = !addr.ip().is_loopback();
    if protect {
        tracing::info!("listening beyond loopback: /api/v1 reads need the API token");
    }
    let router = app(AppState::new(service.clone(), token).protect_reads(protect));
    let mut server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    tokio::select! {
        () = shutdown => {}
        ended = &mut server => {
            let reason = match ended {
                Ok(Ok(())) => "it ended".to_owned(),
                Ok(Err(e)) => describe(&e),
                Err(e) => e.to_string(),
            };
            scheduler.shutdown().await;
            service.shutdown(grace).await;
            return Err(ServeError::Http(reason));
        }
    }
    tracing::info!(
        "stopping: no new runs start; running ones have {} to finish",
        humantime::format_duration(grace)
    );
    scheduler.shutdown().await;
    let report = service.shutdown(grace).await;
    if report.interrupted > 0 {
        tracing::warn!(
            "stopped {} run(s) at the end of the grace period; they wrote no snapshot, so the \
             repository is consistent, and prune removes what they uploaded",
            report.interrupted
        );
    }
    let _ = stop_http.send(());
    if tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .is_err()
    {
        tracing::info!("closing HTTP connections that stayed open");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Opens (creating on first start) the repository, lists it, and makes up
/// the runs the RPO needs now.
async fn warm_up(service: Arc<Service>) {
    let url = service.config().repository.url.clone();
    let attempt = async {
        let repo = service.open_repository().await.map_err(|e| describe(&e))?;
        service
            .refresh_catalog(&repo)
            .await
            .map_err(|e| describe(&e))
    };
    match tokio::time::timeout(Duration::from_secs(120), attempt).await {
        Ok(Ok(())) => {
            let figures = service.catalog().figures();
            tracing::info!(
                "repository {url}: {} snapshots, {} packs, {} bytes",
                figures.snapshots,
                figures.packs,
                figures.size_bytes
            );
        }
        Ok(Err(e)) => {
            tracing::error!("the repository cannot be used yet: {e}; every run tries again")
        }
        Err(_) => tracing::error!(
            "the repository {url} did not answer within 120 s; every run tries again"
        ),
    }
    if service.is_stopping() {
        return;
    }
    if let Err(e) = make_up_missed_runs(&service).await {
        tracing::error!("missed runs cannot be made up: {}", describe(&e));
    }
}

/// A future that resolves on SIGTERM or SIGINT. The handlers are
/// installed when this is called, so a signal that comes before the future
/// is first awaited is not lost.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut streams = Vec::new();
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
    ] {
        match signal(kind) {
            Ok(stream) => streams.push((stream, name)),
            Err(e) => tracing::error!("cannot listen for {name}: {e}"),
        }
    }
    async move {
        let waits = streams.iter_mut().map(|(stream, name)| {
            Box::pin(async move {
                stream.recv().await;
                *name
            })
        });
        if waits.len() == 0 {
            return std::future::pending().await;
        }
        let (name, _, _) = futures_util::future::select_all(waits).await;
        tracing::info!("received {name}");
    }
}
