//! Command line: the local server, replay of saved events, cases and a person's decisions on
//! them, the audit, and subscriptions.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use risk_responder::app::{self, StartError};
use risk_responder::cases::{Case, CaseStatus, Mode};
use risk_responder::config::Config;
use risk_responder::http::{AppState, Intake, router};
use risk_responder::ledger::Ledger;
use risk_responder::queue::{MemoryQueue, SqsQueue, WorkItem, WorkQueue};
use risk_responder::replay::{ReplayContext, replay_file};
use risk_responder::respond::Worker;
use risk_responder::respond::decide::{Choice, decide};
use risk_responder::respond::report::CaseReport;

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
        /// Run against the built-in simulated tenant (no Microsoft tenant is reached).
        #[arg(long)]
        demo: bool,
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
        /// Run against the built-in simulated tenant (no Microsoft tenant is reached), then
        /// print the audit. With --enforce, the plans are carried out on the simulated tenant.
        #[arg(long)]
        demo: bool,
    },
    /// Sweep Identity Protection and the sign-ins that failed with 53011, as the scheduled
    /// sweep does: every user found becomes a signal. Without RR_QUEUE_URL the signals are
    /// worked here, at once.
    Sweep {
        /// Tenant (default: every allowed tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Look back to this time (RFC 3339) instead of the tenant's watermarks.
        #[arg(long)]
        since: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Sweep the built-in simulated tenant into the demo's ledger (no Microsoft tenant is
        /// reached).
        #[arg(long)]
        demo: bool,
    },
    /// The user-risk Conditional Access policy: check what the tenant has, or create one in
    /// report-only mode (never enabled).
    CaPolicy {
        #[command(subcommand)]
        action: CaAction,
        /// Tenant (default: every allowed tenant).
        #[arg(long, global = true)]
        tenant: Option<String>,
    },
    /// Cases: one per user and risk episode, with their signals, plan, actions, and who acts next.
    Cases {
        #[command(subcommand)]
        action: CasesAction,
        /// The demo's cases (`risk-responder-demo.sqlite`); approve and retry act on the
        /// built-in simulated tenant.
        #[arg(long, global = true)]
        demo: bool,
    },
    /// The audit: every signal as received and what became of it, and every step of every case
    /// (newest first).
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// The demo's audit (`risk-responder-demo.sqlite`).
        #[arg(long)]
        demo: bool,
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

#[derive(Subcommand)]
enum CasesAction {
    /// List cases, most recently updated first.
    List {
        /// Only cases with this status (new, open, retry, needs_operator, awaiting_approval,
        /// completed, skipped).
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one case (by case id, or the id of a signal merged into it).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Carry out the plan version you read in `cases show`, even past a rail that held it (or a
    /// report-only plan). Actions added after that version stay held for their own approval.
    Approve {
        id: String,
        /// The plan version you approve (`cases show` prints it).
        #[arg(long)]
        plan_version: u32,
        /// Why (recorded with the decision).
        #[arg(long)]
        reason: String,
        /// Who decides (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Do nothing more on the case; it closes.
    Skip {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
    /// Try the case's failed actions again (after fixing a permission, say).
    Retry {
        id: String,
        #[arg(long, default_value = "retry requested")]
        reason: String,
        #[arg(long)]
        by: Option<String>,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Report the user-risk policies: levels, users, exclusions (break-glass), state.
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Add a user-risk policy in report-only mode (MFA and password change, sign-in frequency
    /// every time), excluding the policy's protected accounts and groups.
    Create {
        /// User-risk levels it applies to (comma-separated: low, medium, high).
        #[arg(long, default_value = "high", value_delimiter = ',')]
        levels: Vec<String>,
        #[arg(
            long,
            default_value = "risk-responder: require MFA and a password change for risky users"
        )]
        name: String,
        /// Create it even if a user-risk policy exists already.
        #[arg(long)]
        force: bool,
        /// Create it even though the policy names no protected (break-glass) account or group
        /// to exclude (Microsoft: always exclude emergency-access accounts).
        #[arg(long)]
        without_exclusions: bool,
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
    risk_responder::support::telemetry::init();
    let result = match Cli::parse().command {
        Command::Serve { bind, demo } => serve(bind, demo).await,
        Command::Replay {
            files,
            json,
            enforce,
            ingress_only,
            demo,
        } => replay(&files, json, enforce, ingress_only, demo).await,
        Command::Audit { limit, json, demo } => audit(limit, json, demo).await,
        Command::Cases { action, demo } => cases(action, demo).await,
        Command::CaPolicy { action, tenant } => ca_policy(action, tenant).await,
        Command::Sweep {
            tenant,
            since,
            json,
            demo,
        } => sweep(tenant, since, json, demo).await,
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

/// The demo's own ledger file (in the working directory).
const DEMO_LEDGER: &str = "risk-responder-demo.sqlite";

/// The simulated tenant a `--demo` command runs against (kept alive while it runs).
#[cfg(feature = "demo")]
type DemoTenant = risk_responder::demo::GraphSimulator;
#[cfg(not(feature = "demo"))]
type DemoTenant = ();

/// The demo: the simulated tenant started in this process and the configuration pointed at
/// it (Graph, the token endpoint, the signing keys, the embedded development secrets, the
/// demo policy, a ledger of its own), so nothing can reach a real tenant.
#[cfg(feature = "demo")]
async fn demo(config: &mut Config, fresh_ledger: bool) -> Result<DemoTenant, StartError> {
    use risk_responder::config::SecretsSource;
    use risk_responder::demo::{simulator, tenant as demo_tenant};
    let simulator = simulator::start_with(demo_tenant::directory()).await?;
    // Every outbound URL of the configuration points at the simulator, whatever the
    // environment says: Graph, the token endpoint, the signing keys, Azure Resource Manager
    // (incident comments); subscriptions are not managed.
    config.graph_base_url = simulator.graph_url();
    config.login_authority = simulator.authority();
    config.jwks_url = format!("{}/demo/keys", simulator.base);
    config.arm_base_url = simulator.arm_url();
    config.notification_url = None;
    config.ingress_secrets = SecretsSource::EmbeddedDev;
    config.graph_secrets = SecretsSource::EmbeddedDev;
    config.allowed_tenants = vec![demo_tenant::TENANT.to_owned()];
    config.queue_url = None;
    config.ledger_table = None;
    config.in_lambda = false;
    let policy = std::env::temp_dir().join(format!(
        "risk-responder-demo-policy-{}.toml",
        std::process::id()
    ));
    std::fs::write(&policy, risk_responder::demo::POLICY)?;
    config.policy_file = Some(policy);
    // A ledger of its own, whatever RR_LEDGER_PATH says: the demo starts it afresh and must
    // never touch (or delete) the operator's ledger.
    config.ledger_path = PathBuf::from(DEMO_LEDGER);
    if fresh_ledger {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", config.ledger_path.display()));
        }
    }
    // The simulated tenant's subscription, recorded with its tenant as `subscriptions create`
    // records ours: the webhook keeps notifications only from subscriptions it knows.
    risk_responder::ledger::Ledger::new(Arc::new(
        risk_responder::ledger::sqlite::SqliteStore::open(&config.ledger_path)?,
    ))
    .record_subscriptions(demo_tenant::TENANT, &[demo_tenant::SUBSCRIPTION])
    .await?;
    eprintln!(
        "DEMO MODE: a simulated Microsoft 365 tenant (Graph and the sign-in endpoint) runs in this process at {}; \
         no request can reach Microsoft. Users: Adele (high risk, blocked sign-ins), Alex (can self-remediate), \
         Grady (synced from on-premises), Isaiah (no MFA registration), an emergency-access account, Megan (not at risk). \
         Ledger: {}.",
        simulator.base,
        config.ledger_path.display()
    );
    Ok(simulator)
}

/// Without the `demo` feature there is no simulated tenant to run against.
#[cfg(not(feature = "demo"))]
async fn demo(_config: &mut Config, _fresh_ledger: bool) -> Result<DemoTenant, StartError> {
    Err("this build has no demo tenant (it was built without the `demo` feature): build with default features".into())
}

async fn replay(
    files: &[PathBuf],
    json: bool,
    enforce: bool,
    ingress_only: bool,
    demo_mode: bool,
) -> Result<(), StartError> {
    let mut config = Config::from_env()?;
    let _simulator = if demo_mode {
        Some(demo(&mut config, true).await?)
    } else {
        None
    };
    let store = app::ingress_secret_store(&config).await?;
    let http = reqwest::Client::new();
    let intake = Intake::in_process(Arc::new(MemoryQueue::default()))?;
    let state = AppState::new(config, store, intake, http.clone());
    let secrets = state.secrets.load().await?;
    let mut audit_ledger = None;
    let worker = if ingress_only {
        None
    } else {
        let graph_store = app::graph_secret_store(&state.config).await?;
        let graph_secrets = graph_store.load().await?;
        let (ledger, _) = app::ledger(&state.config).await?;
        audit_ledger = Some(ledger.clone());
        let graph =
            app::shared_graph_client(&state.config, &graph_secrets, graph_store, http, &ledger)?;
        // The demo's policy is report-only; on the simulated tenant --enforce carries it out.
        let mode = match (enforce, demo_mode) {
            (false, _) => Some(Mode::ReportOnly),
            (true, true) => Some(Mode::Enforce),
            (true, false) => None,
        };
        Some(app::worker(&state.config, graph, &graph_secrets, ledger, None, mode).await?)
    };
    let ctx = ReplayContext {
        config: &state.config,
        secrets: &secrets,
        tokens: state.tokens.as_deref(),
        worker: worker.as_ref(),
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
    // The demo ends where an operator would look next: the audit.
    if let (true, false, Some(ledger)) = (demo_mode, json, &audit_ledger) {
        println!("\nAudit (risk-responder audit):");
        print_audit(ledger, 100, false).await?;
    }
    Ok(())
}

async fn sweep(
    tenant: Option<String>,
    since: Option<String>,
    json: bool,
    demo_mode: bool,
) -> Result<(), StartError> {
    use risk_responder::respond::sweep::Sweeper;
    let mut config = Config::from_env()?;
    let _simulator = if demo_mode {
        Some(demo(&mut config, false).await?)
    } else {
        None
    };
    let since = match since {
        Some(text) => Some(
            time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| format!("--since {text:?} is not an RFC 3339 time: {e}"))?,
        ),
        None => None,
    };
    let tenants = tenant.map_or_else(
        || config.allowed_tenants.clone(),
        |t| vec![t.to_ascii_lowercase()],
    );
    if let Some(t) = tenants.iter().find(|t| !config.tenant_allowed(t)) {
        return Err(format!("tenant {t} is not in RR_ALLOWED_TENANTS").into());
    }
    let store = app::graph_secret_store(&config).await?;
    let secrets = store.load().await?;
    let (intake, memory) = app::intake(&config).await?;
    let graph = app::shared_graph_client(
        &config,
        &secrets,
        store,
        reqwest::Client::new(),
        &intake.ledger,
    )?;
    let policy = app::load_policy(&config)?;
    let sweeper = Sweeper {
        graph: &graph,
        ledger: &intake.ledger,
        intake: &intake,
        first_lookback: time::Duration::hours(i64::from(policy.lookback_hours)),
    };
    let mut failed = 0;
    for (tenant, outcome) in sweeper.run_all(&tenants, since).await {
        match outcome {
            Ok(report) => {
                if json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "{tenant}: {} Identity Protection record(s) changed since {} ({} at risk), {} sign-in(s) failed with 53011 since {} ({} user(s)): {} signal(s) kept",
                        report.records_listed,
                        report.risk_since,
                        report.users_at_risk,
                        report.blocked_sign_ins,
                        report.sign_ins_since,
                        report.users_blocked,
                        report.signals.len()
                    );
                    if let Some(gap) = report.sign_in_gap {
                        println!(
                            "{tenant}: sign-ins from {} to {} are still to be read (more than one run reads); the next runs read them",
                            gap.since, gap.until
                        );
                    }
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("{tenant}: sweep failed: {e}");
            }
        }
    }
    if let Some(queue) = memory {
        // No queue configured: work the signals here, as the local server would.
        let items = queue.drain();
        if !items.is_empty() {
            let worker = app::worker(
                &config,
                graph.clone(),
                &secrets,
                intake.ledger.clone(),
                None,
                None,
            )
            .await?;
            let dispositions = worker.handle_batch(&items).await;
            let mut shown = Vec::new();
            for (item, disposition) in items.iter().zip(dispositions) {
                if let WorkItem::Risk(signal) = item
                    && let Ok(Some(record)) = intake.ledger.signal(&signal.event_id).await
                {
                    if !json {
                        println!(
                            "  signal {} -> {} ({disposition:?})",
                            signal.event_id,
                            record.case_id.as_deref().unwrap_or("no case")
                        );
                    }
                    if let Some(id) = record.case_id
                        && !shown.contains(&id)
                    {
                        shown.push(id);
                    }
                }
            }
            for id in shown {
                if let Some((case, _)) = intake.ledger.case(&id).await? {
                    if json {
                        println!("{}", serde_json::to_string(&case)?);
                    } else {
                        print!("{}", CaseReport(&case));
                    }
                }
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {} tenant sweeps failed", tenants.len()).into());
    }
    Ok(())
}

async fn ca_policy(action: CaAction, tenant: Option<String>) -> Result<(), StartError> {
    use risk_responder::respond::ca_policy;
    let config = Config::from_env()?;
    let policy = app::load_policy(&config)?;
    let store = app::graph_secret_store(&config).await?;
    let secrets = store.load().await?;
    // Conditional Access shares the tenant's Identity Protection budget: paced through the
    // ledger with every other process of this deployment.
    let (ledger, _) = app::ledger(&config).await?;
    let graph =
        app::shared_graph_client(&config, &secrets, store, reqwest::Client::new(), &ledger)?;
    if let Some(t) = &tenant
        && !config.tenant_allowed(t)
    {
        return Err(format!("tenant {t} is not in RR_ALLOWED_TENANTS").into());
    }
    if let CaAction::Create {
        without_exclusions: false,
        ..
    } = &action
        && policy.safety.protected_user_ids.is_empty()
        && policy.safety.protected_group_ids.is_empty()
    {
        return Err(
            "the policy lists no protected (break-glass) account or group to exclude, and a user-risk policy \
             that excludes no emergency-access account can lock every administrator out: add them to [safety] \
             protected_user_ids / protected_group_ids (or pass --without-exclusions)"
                .into(),
        );
    }
    let tenants = tenant.map_or_else(|| config.allowed_tenants.clone(), |t| vec![t]);
    for tenant in tenants {
        let existing = graph.conditional_access_policies(&tenant).await?;
        let found = ca_policy::check(&existing, &policy);
        match &action {
            CaAction::Check { json } => {
                if *json {
                    println!(
                        "{}",
                        serde_json::json!({ "tenant": tenant, "user_risk_policies": found })
                    );
                    continue;
                }
                if found.is_empty() {
                    println!(
                        "{tenant}: no user-risk Conditional Access policy: risky users cannot remediate themselves (`ca-policy create` adds one in report-only mode)"
                    );
                }
                for p in &found {
                    println!(
                        "{tenant}: {:?} ({}) state {}",
                        p.display_name, p.id, p.state
                    );
                    println!("  user risk levels: {}", p.user_risk_levels.join(", "));
                    println!(
                        "  users: include {:?} groups {:?} roles {:?}; exclude {:?} groups {:?} roles {:?}",
                        p.include_users,
                        p.include_groups,
                        p.include_roles,
                        p.exclude_users,
                        p.exclude_groups,
                        p.exclude_roles
                    );
                    println!(
                        "  grant {}; sign-in frequency {}",
                        p.grant,
                        p.sign_in_frequency.as_deref().unwrap_or("not set")
                    );
                    for finding in &p.findings {
                        println!("  ! {finding}");
                    }
                }
            }
            CaAction::Create {
                levels,
                name,
                force,
                ..
            } => {
                if let Some(l) = levels
                    .iter()
                    .find(|l| !matches!(l.as_str(), "low" | "medium" | "high"))
                {
                    return Err(format!("--levels: {l:?} is not low, medium or high").into());
                }
                if !found.is_empty() && !force {
                    return Err(format!(
                        "{tenant} has a user-risk policy already ({}): not creating another (--force to do it anyway)",
                        found.iter().map(|p| p.display_name.as_str()).collect::<Vec<_>>().join(", ")
                    )
                    .into());
                }
                let body = ca_policy::new_policy(name, levels, &policy);
                let created = graph
                    .create_conditional_access_policy(&tenant, &body)
                    .await?;
                println!(
                    "{tenant}: created {:?} ({}) in state {} (report-only: review its results in the sign-in logs, then enable it in the portal)",
                    created["displayName"].as_str().unwrap_or_default(),
                    created["id"].as_str().unwrap_or_default(),
                    created["state"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn decider(by: Option<String>) -> String {
    by.or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("USERNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown operator".into())
}

async fn find(ledger: &Ledger, id: &str) -> Result<(Case, u64), StartError> {
    ledger.find_case(id).await?.ok_or_else(|| {
        format!("no case {id} (nor a signal with that id merged into a case)").into()
    })
}

async fn cases(action: CasesAction, demo_mode: bool) -> Result<(), StartError> {
    let mut config = Config::from_env()?;
    // Approve and retry carry the plan out, so the demo's need its simulated tenant.
    let _simulator = if demo_mode {
        Some(demo(&mut config, false).await?)
    } else {
        None
    };
    let (ledger, _) = app::ledger(&config).await?;
    let now = time::OffsetDateTime::now_utc();
    let (id, decision, reason, by) = match action {
        CasesAction::List {
            status,
            limit,
            json,
        } => {
            let wanted = match status.as_deref() {
                None => None,
                Some(s) => {
                    Some(CaseStatus::parse(s).ok_or_else(|| format!("unknown status {s:?}"))?)
                }
            };
            let cases = ledger
                .cases(if wanted.is_some() { usize::MAX } else { limit })
                .await?;
            for case in cases
                .iter()
                .filter(|c| wanted.is_none_or(|w| c.status == w))
                .take(limit)
            {
                if json {
                    println!("{}", serde_json::to_string(case)?);
                } else {
                    let done = case
                        .actions
                        .iter()
                        .filter(|a| a.state.word() == "done")
                        .count();
                    println!(
                        "{}  {}  {:<17}  {:<16}  {:?}  {} signal(s)  {}/{} done  next {}",
                        case.updated_at,
                        case.case_id,
                        case.status.as_str(),
                        case.user_principal_name.as_deref().unwrap_or(&case.user_id),
                        case.risk_level,
                        case.signals.count,
                        done,
                        case.actions.len(),
                        case.next_actor()
                    );
                }
            }
            return Ok(());
        }
        CasesAction::Show { id, json } => {
            let (case, _) = find(&ledger, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&case)?);
            } else {
                print!("{}", CaseReport(&case));
                for entry in &case.history {
                    println!("    {}  {}", entry.at, entry.what);
                }
            }
            return Ok(());
        }
        CasesAction::Approve {
            id,
            plan_version,
            reason,
            by,
        } => (id, Choice::Approve { plan_version }, reason, decider(by)),
        CasesAction::Skip { id, reason, by } => (id, Choice::Skip, reason, decider(by)),
        CasesAction::Retry { id, reason, by } => (id, Choice::Retry, reason, decider(by)),
    };
    let decided = decide(&ledger, &id, decision, &by, &reason, now).await?;
    let case = decided.case;
    let decision = decision.word();
    if let Some(approval) = decided.approval
        && approval.still_held > 0
    {
        println!(
            "{} action(s) were added after the version you approved and still wait for their own approval (plan version {}).",
            approval.still_held, case.plan_version
        );
    }
    println!("{decision} recorded by {by} on case {}", case.case_id);
    // A skipped case has nothing left to do, except telling its Sentinel incidents (the worker
    // writes the comment).
    if decision == "skip" && case.write_back.is_empty() {
        print!("{}", CaseReport(&case));
        return Ok(());
    }
    let item = WorkItem::Resume {
        tenant_id: case.tenant_id.clone(),
        case_id: case.case_id.clone(),
    };
    match &config.queue_url {
        Some(url) => {
            let client = aws_sdk_sqs::Client::new(&app::aws_config().await);
            SqsQueue::new(client, url.clone()).send(&[item]).await?;
            println!("queued for the worker");
        }
        None => {
            // Locally, carry it out now.
            let store = app::graph_secret_store(&config).await?;
            let secrets = store.load().await?;
            let graph = app::shared_graph_client(
                &config,
                &secrets,
                store,
                reqwest::Client::new(),
                &ledger,
            )?;
            let worker = app::worker(&config, graph, &secrets, ledger.clone(), None, None).await?;
            let disposition = worker.handle(&item).await;
            println!("worked: {disposition:?}");
        }
    }
    if let Some((case, _)) = ledger.case(&case.case_id).await? {
        print!("{}", CaseReport(&case));
    }
    Ok(())
}

async fn audit(limit: usize, json: bool, demo_mode: bool) -> Result<(), StartError> {
    let mut config = Config::from_env()?;
    if demo_mode {
        config.ledger_path = PathBuf::from(DEMO_LEDGER);
        config.ledger_table = None;
    }
    let (ledger, _) = app::ledger(&config).await?;
    print_audit(&ledger, limit, json).await
}

/// Every signal and what became of it, then every step of every case, newest first.
async fn print_audit(ledger: &Ledger, limit: usize, json: bool) -> Result<(), StartError> {
    for record in ledger.signals(limit).await? {
        if json {
            println!("{}", serde_json::json!({ "signal": record }));
            continue;
        }
        println!(
            "{}  signal {}  {}  {}  tenant {}  -> {}: {}",
            record.received_at,
            record.signal.event_id,
            record.signal.source.as_str(),
            record.signal.source_id,
            record.signal.tenant_id,
            record.case_id.as_deref().unwrap_or("no case"),
            record.disposition.as_deref().unwrap_or("not processed yet")
        );
    }
    let mut steps = Vec::new();
    for case in ledger.cases(limit).await? {
        for entry in &case.history {
            steps.push((entry.at, case.case_id.clone(), entry.what.clone()));
        }
    }
    steps.sort_by_key(|step| std::cmp::Reverse(step.0));
    for (at, case_id, what) in steps.into_iter().take(limit) {
        if json {
            println!(
                "{}",
                serde_json::json!({ "case_id": case_id, "at": at.to_string(), "what": what })
            );
        } else {
            println!("{at}  case {case_id}  {what}");
        }
    }
    Ok(())
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
    let (ledger, _) = app::ledger(&config).await?;
    let manager = app::subscriptions(&config, &ingress, graph, Some(ledger))
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

async fn serve(bind: Option<std::net::SocketAddr>, demo_mode: bool) -> Result<(), StartError> {
    let mut config = Config::from_env()?;
    let _simulator = if demo_mode {
        Some(demo(&mut config, false).await?)
    } else {
        None
    };
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
    // The worker has its own ledger connection, which waits while intake answers requests:
    // it never slows intake.
    let activity = risk_responder::http::IntakeActivity::default();
    let worker_ledger = app::local_worker_ledger(&config, &activity).await?;
    let graph = app::shared_graph_client(
        &config,
        &graph_secrets,
        graph_store,
        http.clone(),
        &worker_ledger,
    )?;
    let subscriptions = app::subscriptions(
        &config,
        &ingress,
        graph.clone(),
        Some(worker_ledger.clone()),
    );
    let worker: Worker = app::worker(
        &config,
        graph,
        &graph_secrets,
        worker_ledger,
        subscriptions,
        None,
    )
    .await?;
    let mut state = AppState::new(config, ingress_store, intake, http);
    state.activity = activity.clone();

    // Inline queue: the worker waits on it and takes up to 100 items at a time, on its own
    // ledger connection and its own thread, at a lower CPU priority, so intake never waits for
    // it (a full queue is answered 503). What failed is resumed from the ledger with backoff
    // (and after a restart).
    let maintenance = app::ledger_maintenance(&state.config, &activity)?;
    risk_responder::respond::local::spawn_local_worker(Arc::new(worker), memory, maintenance)?;

    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router(state)).await?;
    Ok(())
}
