//! Command line: the local server (`serve`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use risk_responder::config::Config;
use risk_responder::http::{AppState, router, secret_store};
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
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    risk_responder::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { bind } => serve(bind).await,
        Command::Replay { files, json } => replay(&files, json).await,
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
) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::from_env()?;
    let store = secret_store(&config)?;
    let state = AppState::new(
        config,
        store,
        Arc::new(MemoryQueue::default()),
        reqwest::Client::new(),
    )
    .await?;
    let secrets = state.secrets.load().await?;
    let mut failed = 0;
    for file in files {
        let summary = risk_responder::replay::replay_file(
            file,
            &state.config,
            &secrets,
            state.tokens.as_deref(),
        )
        .await;
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
    let secrets = secret_store(&config)?;
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
