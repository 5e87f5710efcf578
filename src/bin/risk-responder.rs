//! Command line: the local server, replay of saved events, the audit, and subscriptions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use risk_responder::app::{self, StartError};
use risk_responder::config::Config;
use risk_responder::http::{AppState, Intake, router};
use risk_responder::policy::Mode;
use risk_responder::queue::MemoryQueue;
use risk_responder::replay::{ReplayContext, replay_file};
use risk_responder::worker::Worker;

#[derive(Parser)]
#[command(version, about = "Automated response to Entra ID risky users")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the webhook locally (default 127.0.0.1:3000, or RR_BIND), with an inline worker
    /// and the SQLite ledger (RR_LEDGER_PATH).
    Serve {
        /// Address to listen on.
        #[arg(long)]
        bind: Option<std::net::SocketAddr>,
    },
    /// Run saved events (raw Graph/Sentinel bodies or Lambda HTTP events) through the
    /// pipeline inline, and print a summary per file.
    Replay {
        /// Files to replay.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print one JSON object per file instead of text.
        #[arg(long)]
        json: bool,
        /// Carry out the plan when the policy's mode is enforce (default: report-only).
        #[arg(long)]
        enforce: bool,
        /// Stop after ingress: do not investigate (no Graph calls).
        #[arg(long)]
        ingress_only: bool,
    },
    /// List what the ledger recorded: events, decisions, actions (newest first).
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage Graph change-notification subscriptions (needs RR_NOTIFICATION_URL).
    Subscriptions {
        #[command(subcommand)]
        action: SubscriptionAction,
        /// Tenant (default: every allowed tenant).
        #[arg(long, global = true)]
        tenant: Option<String>,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum SubscriptionAction {
    /// Create the missing subscriptions.
    Create,
    /// Renew subscriptions expiring within three days.
    Renew,
    /// List our subscriptions.
    List,
}

#[tokio::main]
async fn main() -> ExitCode {
    risk_responder::telemetry::init();
    let result = match Cli::parse().command {
        Command::Serve { bind } => serve(bind).await,
        Command::Replay {
            files,
            json,
            enforce,
            ingress_only,
        } => replay(&files, json, enforce, ingress_only).await,
        Command::Audit { limit, json } => audit(limit, json).await,
        Command::Subscriptions { action, tenant } => subscriptions(action, tenant).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn replay(
    files: &[PathBuf],
    json: bool,
    enforce: bool,
    ingress_only: bool,
) -> Result<(), StartError> {
    let config = Config::from_env()?;
    let store = app::ingress_secret_store(&config).await?;
    let http = reqwest::Client::new();
    let intake = Intake::in_process(Arc::new(MemoryQueue::default()))?;
    let state = AppState::new(config, store, intake, http.clone());
    let secrets = state.secrets.load().await?;
    let pipeline = if ingress_only {
        None
    } else {
        let graph_store = app::graph_secret_store(&state.config).await?;
        let graph_secrets = graph_store.load().await?;
        let graph = app::graph_client(&state.config, &graph_secrets, graph_store, http)?;
        let mode = (!enforce).then_some(Mode::ReportOnly);
        Some(app::pipeline(graph, &state.config, mode).await?)
    };
    let ctx = ReplayContext {
        config: &state.config,
        secrets: &secrets,
        tokens: state.tokens.as_deref(),
        pipeline: pipeline.as_deref(),
    };
    let mut failed = 0;
    for file in files {
        let summary = replay_file(file, &ctx).await;
        failed += usize::from(summary.error.is_some());
        if json {
            println!("{}", serde_json::to_string(&summary)?);
        } else {
            print!("{summary}");
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {} files could not be replayed", files.len()).into());
    }
    Ok(())
}

async fn audit(limit: usize, json: bool) -> Result<(), StartError> {
    let config = Config::from_env()?;
    let (ledger, _) = app::ledger(&config).await?;
    for entry in ledger.list(limit).await? {
        if json {
            println!("{}", serde_json::to_string(&entry)?);
            continue;
        }
        let decision = entry
            .report
            .as_ref()
            .map(|r| match (&r.error, &r.outcome) {
                (Some(error), _) => format!("error: {error}"),
                (None, Some(outcome)) => {
                    let actions: Vec<String> = outcome
                        .actions
                        .iter()
                        .map(|a| format!("{:?}={}", a.action, status_word(&a.status)))
                        .collect();
                    match (&outcome.plan.rule, &outcome.plan.reason) {
                        (Some(rule), _) => {
                            format!("{:?} rule {rule:?}: {}", outcome.mode, actions.join(" "))
                        }
                        (None, reason) => {
                            format!("no action: {}", reason.as_deref().unwrap_or("-"))
                        }
                    }
                }
                (None, None) => "-".into(),
            })
            .unwrap_or_else(|| "not processed yet".into());
        println!(
            "{}  {}  tenant {}  {:?}  attempts {}  {decision}",
            entry.updated_at, entry.event_id, entry.tenant_id, entry.status, entry.attempts
        );
    }
    Ok(())
}

fn status_word(status: &risk_responder::remediate::ActionStatus) -> &'static str {
    use risk_responder::remediate::ActionStatus::*;
    match status {
        Planned => "planned",
        Done { .. } => "done",
        Failed { .. } => "failed",
        NotAttempted => "not-attempted",
    }
}

async fn subscriptions(
    action: SubscriptionAction,
    tenant: Option<String>,
) -> Result<(), StartError> {
    let config = Config::from_env()?;
    let store = app::graph_secret_store(&config).await?;
    let secrets = store.load().await?;
    let ingress = app::ingress_secret_store(&config).await?.load().await?;
    let graph = app::graph_client(&config, &secrets, store, reqwest::Client::new())?;
    let manager = app::subscriptions(&config, &ingress, graph)
        .ok_or("set RR_NOTIFICATION_URL (public URL of /graph/notifications) and a clientState")?;
    let tenants = tenant.map_or_else(|| config.allowed_tenants.clone(), |t| vec![t]);
    for tenant in tenants {
        match action {
            SubscriptionAction::Create => {
                for s in manager.ensure(&tenant).await? {
                    println!(
                        "{tenant}  created {}  {}  until {}",
                        s.id, s.resource, s.expiration_date_time
                    );
                }
            }
            SubscriptionAction::Renew => {
                let n = manager
                    .renew(&tenant, Duration::from_secs(3 * 24 * 3600))
                    .await?;
                println!("{tenant}  renewed {n}");
            }
            SubscriptionAction::List => {
                for s in manager.list(&tenant).await? {
                    println!(
                        "{tenant}  {}  {}  {}  until {}",
                        s.id, s.resource, s.change_type, s.expiration_date_time
                    );
                }
            }
        }
    }
    Ok(())
}

async fn serve(bind: Option<std::net::SocketAddr>) -> Result<(), StartError> {
    let mut config = Config::from_env()?;
    if let Some(bind) = bind {
        config.bind = bind;
    }
    let addr = config.bind;
    let ingress_store = app::ingress_secret_store(&config).await?;
    let ingress = ingress_store.load().await?;
    let graph_store = app::graph_secret_store(&config).await?;
    let graph_secrets = graph_store.load().await?;
    let http = reqwest::Client::new();
    let (intake, memory) = app::intake(&config).await?;
    let graph = app::graph_client(&config, &graph_secrets, graph_store, http.clone())?;
    let worker = Worker {
        ledger: intake.ledger.clone(),
        pipeline: app::pipeline(graph.clone(), &config, None).await?,
        subscriptions: app::subscriptions(&config, &ingress, graph),
    };
    let state = AppState::new(config, ingress_store, intake, http);

    // Inline queue: the worker drains it in the background.
    if let Some(queue) = memory {
        tokio::spawn(async move {
            loop {
                for item in queue.drain() {
                    let disposition = worker.handle(&item).await;
                    tracing::info!(?disposition, "inline work item handled");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router(state)).await?;
    Ok(())
}
