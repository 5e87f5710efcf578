//! Two workers on one case, with the order of their saves forced: worker A makes its first
//! `lead` saves of case and user records alone, then the two alternate, save by save. Whatever
//! the interleaving, the case is remediated once: one revoke, one block, one password, one
//! confirm, one SOC mail, and no action repeated from a stale copy.

mod common;
mod graph_standin;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::hooked_store::{HookedStore, StoreHooks};
use graph_standin::*;
use risk_responder::cases::CaseStatus;
use risk_responder::ledger::sqlite::SqliteStore;
use risk_responder::ledger::{Ledger, Store};

/// Whose save goes next.
struct Baton {
    /// (saves made so far, which workers are done, saves per worker)
    state: Mutex<(usize, [bool; 2], [usize; 2])>,
    changed: tokio::sync::Notify,
    lead: usize,
}

impl Baton {
    fn new(lead: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((0, [false; 2], [0; 2])),
            changed: tokio::sync::Notify::new(),
            lead,
        })
    }

    /// Whose turn save number `n` is: A's for the first `lead`, then B, A, B, …
    fn turn(&self, n: usize) -> usize {
        if n < self.lead {
            0
        } else {
            1 - (n - self.lead) % 2
        }
    }

    async fn wait_for(&self, me: usize) {
        loop {
            let notified = self.changed.notified();
            {
                let state = self.state.lock().unwrap();
                if self.turn(state.0) == me || state.1[1 - me] {
                    return;
                }
            }
            notified.await;
        }
    }

    fn saved(&self, me: usize) {
        let mut state = self.state.lock().unwrap();
        state.0 += 1;
        state.2[me] += 1;
        drop(state);
        self.changed.notify_waiters();
    }

    fn saves(&self) -> [usize; 2] {
        self.state.lock().unwrap().2
    }

    fn done(&self, me: usize) {
        self.state.lock().unwrap().1[me] = true;
        self.changed.notify_waiters();
    }
}

/// Hooks that make each worker's case and user saves wait for their turn.
struct Turns {
    me: usize,
    baton: Arc<Baton>,
}

fn gated(key: &str) -> bool {
    key.starts_with("case#") || key.starts_with("user#")
}

#[async_trait]
impl StoreHooks for Turns {
    async fn before_put(&self, key: &str, _: &str) {
        if gated(key) {
            self.baton.wait_for(self.me).await;
        }
    }

    async fn after_put(&self, key: &str, _: &str, _: Option<u64>) {
        if gated(key) {
            self.baton.saved(self.me);
        }
    }
}

fn count_calls(s: &StandIn, part: &str) -> usize {
    s.with(|d| d.calls.iter().filter(|(c, _)| c.contains(part)).count())
}

#[tokio::test]
async fn two_workers_remediate_a_case_once_whatever_the_order_of_their_saves() {
    for lead in 0..8 {
        let s = start().await;
        seed(&s, "high", "atRisk", 1);
        let store = Arc::new(SqliteStore::in_memory().unwrap());
        let baton = Baton::new(lead);
        let worker = |me: usize| {
            enforcing_worker(
                &s,
                Ledger::new(Arc::new(HookedStore::new(
                    store.clone() as Arc<dyn Store>,
                    Turns {
                        me,
                        baton: baton.clone(),
                    },
                ))),
                2,
            )
        };
        let (a, b) = (worker(0), worker(1));
        // Two signals about the same user (an alert and a redelivery of another), one case.
        let (first, second) = (adele_item("interleaved-a"), adele_item("interleaved-b"));
        let (x, y) = tokio::join!(
            async {
                let out = a.handle(&first).await;
                baton.done(0);
                out
            },
            async {
                let out = b.handle(&second).await;
                baton.done(1);
                out
            }
        );
        let saves = baton.saves();
        assert!(
            saves[0] > 0 && saves[1] > 0,
            "lead {lead}: both workers saved (the interleaving happened): {saves:?}"
        );
        // What was left for retry comes back (as SQS or the local retries would bring it).
        let plain = enforcing_worker(&s, Ledger::new(store.clone()), 2);
        for (item, out) in [(&first, x), (&second, y)] {
            let mut out = out;
            for _ in 0..3 {
                if !out.is_retry() {
                    break;
                }
                out = plain.handle(item).await;
            }
            assert!(!out.is_retry(), "lead {lead}: {out:?}");
        }
        let cases = Ledger::new(store.clone()).cases(10).await.unwrap();
        assert_eq!(cases.len(), 1, "lead {lead}: one case");
        assert_eq!(cases[0].status, CaseStatus::Completed, "lead {lead}");
        let blocks = s.with(|d| {
            d.user_patches
                .iter()
                .filter(|(_, p)| p.iter().any(|p| p == "accountEnabled"))
                .count()
        });
        let soc_mails = mail_subjects(&s)
            .iter()
            .filter(|subject| subject.contains(&cases[0].case_id))
            .count();
        assert_eq!(
            (
                revokes(&s),
                blocks,
                resets(&s),
                count_calls(&s, "riskyUsers/confirmCompromised"),
                soc_mails
            ),
            (1, 1, 1, 1, 1),
            "lead {lead}: revoke, block, reset, confirm, SOC mail once each; subjects {:?}",
            mail_subjects(&s)
        );
        // Every action done once, at one time (no stale copy rewrote an outcome).
        for action in &cases[0].actions {
            assert_eq!(action.state.word(), "done", "lead {lead}: {action:?}");
        }
    }
}
