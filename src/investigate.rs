//! Investigation: re-read the user's risk from Graph and list recent 53011 sign-ins.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::event::{RiskEvent, Subject};
use crate::graph::api::{RiskyUser, SignIn};
use crate::graph::{GraphClient, GraphError};

/// What Graph says about the event's user now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Findings {
    pub tenant_id: String,
    pub user_id: String,
    pub user_principal_name: Option<String>,
    /// `None` when Identity Protection has no record of the user.
    pub risky_user: Option<RiskyUser>,
    /// Sign-ins that failed with AADSTS53011 in the look-back window.
    pub blocked_sign_ins: Vec<SignIn>,
}

impl Findings {
    /// Whether Identity Protection still reports the user at risk.
    pub fn at_risk(&self) -> bool {
        self.risky_user.as_ref().is_some_and(RiskyUser::is_at_risk)
    }
}

/// Why investigation stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvestigateError {
    #[error("the event names no user that Graph knows: {0}")]
    UserGone(String),
    #[error("alert {0} names no user")]
    AlertWithoutUser(String),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

impl InvestigateError {
    /// Whether retrying later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, InvestigateError::Graph(e) if e.is_transient())
    }

    /// Whether an operator must fix credentials or permissions first.
    pub fn needs_operator(&self) -> bool {
        matches!(self, InvestigateError::Graph(e) if e.needs_operator())
    }
}

/// Resolves the event's user and gathers [`Findings`] over the last `lookback`.
pub async fn investigate(
    graph: &GraphClient,
    event: &RiskEvent,
    lookback: Duration,
) -> Result<Findings, InvestigateError> {
    let tenant = event.tenant_id.as_str();
    let (id, upn) = match &event.subject {
        Subject::User { id, upn } => (id.clone(), upn.clone()),
        Subject::SecurityAlert { id } => {
            let alert = graph.security_alert(tenant, id).await?;
            let state = alert
                .get("userStates")
                .and_then(|v| v.as_array())
                .and_then(|s| s.first())
                .ok_or_else(|| InvestigateError::AlertWithoutUser(id.clone()))?;
            let field = |name: &str| state.get(name).and_then(|v| v.as_str()).map(str::to_owned);
            (field("aadUserId"), field("userPrincipalName"))
        }
    };
    let lookup = id.clone().or(upn.clone()).unwrap_or_default();
    let user = match graph.user(tenant, &lookup).await {
        Ok(user) => user,
        Err(GraphError::NotFound { .. }) => return Err(InvestigateError::UserGone(lookup)),
        Err(e) => return Err(e.into()),
    };
    let risky_user = graph.risky_user(tenant, &user.id).await?;
    let since = OffsetDateTime::now_utc() - lookback;
    let blocked_sign_ins = graph.blocked_sign_ins(tenant, &user.id, since).await?;
    Ok(Findings {
        tenant_id: tenant.to_owned(),
        user_id: user.id,
        user_principal_name: user.user_principal_name.or(upn),
        risky_user,
        blocked_sign_ins,
    })
}
