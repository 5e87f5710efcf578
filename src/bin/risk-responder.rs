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
}

#[tokio::main]
async fn main() -> ExitCode {
    risk_responder::telemetry::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { bind } => serve(bind).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
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
