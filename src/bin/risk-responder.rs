//! Command line: the local server (`serve`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use risk_responder::app::secret_store;
use risk_responder::config::Config;
use risk_responder::http::{AppState, router};
use risk_responder::queue::MemoryQueue;

#[derive(Parser)]
#[command(version, about = "Automated response to Entra ID risky users")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the webhook on a local address (default 127.0.0.1:3000, or RR_BIND).
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
        files: Vec<std::path::PathBuf>,
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
}

#[tokio::main]
async fn main() -> ExitCode {
    risk_responder::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { bind } => serve(bind).await,
        Command::Replay {
            files,
            json,
            enforce,
            ingress_only,
        } => replay(&files, json, enforce, ingress_only).await,
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
    files: &[std::path::PathBuf],
    json: bool,
    enforce: bool,
    ingress_only: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use risk_responder::pipeline::Pipeline;
    use risk_responder::policy::Mode;
    use risk_responder::replay::{ReplayContext, replay_file};

    let config = Config::from_env()?;
    let store = secret_store(&config).await?;
    let http = reqwest::Client::new();
    let mut policy = risk_responder::app::load_policy(&config)?;
    if !enforce {
        policy.mode = Mode::ReportOnly;
    }
    let state = AppState::new(
        config,
        store,
        Arc::new(MemoryQueue::default()),
        http.clone(),
    )
    .await?;
    let secrets = state.secrets.load().await?;
    let vault = risk_responder::app::password_vault(&policy).await;
    let pipeline = if ingress_only {
        None
    } else {
        Some(Pipeline::from_secrets(
            &secrets,
            &state.config.graph_base_url,
            &state.config.login_authority,
            http,
            Arc::new(policy),
            vault,
        )?)
    };
    let ctx = ReplayContext {
        config: &state.config,
        secrets: &secrets,
        tokens: state.tokens.as_deref(),
        pipeline: pipeline.as_ref(),
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

async fn serve(bind: Option<std::net::SocketAddr>) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = Config::from_env()?;
    if let Some(bind) = bind {
        config.bind = bind;
    }
    let addr = config.bind;
    let secrets = secret_store(&config).await?;
    let queue = Arc::new(MemoryQueue::default());
    let state = AppState::new(config, secrets, queue.clone(), reqwest::Client::new()).await?;

    // Inline queue: print accepted work as JSON lines until the worker pipeline consumes it.
    tokio::spawn(async move {
        loop {
            for item in queue.drain() {
                if let Ok(line) = serde_json::to_string(&item) {
                    println!("{line}");
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router(state)).await?;
    Ok(())
}
