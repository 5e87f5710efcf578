//! Secrets from AWS Secrets Manager (moto server) through the real aws-sdk client and
//! aws_secretsmanager_caching; temporary-password secrets and their expiry sweep.

mod common;

use std::time::Duration;

use common::moto;
use risk_responder::respond::vault::{EXPIRES_AT_TAG, PasswordVault, SecretsManagerPasswordVault};
use risk_responder::secrets::{SecretStore, SecretString, SecretsManagerStore};

async fn client() -> aws_sdk_secretsmanager::Client {
    aws_sdk_secretsmanager::Client::new(&moto::sdk_config().await)
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4())
}

#[tokio::test]
async fn secrets_load_from_secrets_manager_and_refresh_after_the_ttl() {
    let sm = client().await;
    let id = unique("risk-responder/app");
    sm.create_secret()
        .name(&id)
        .secret_string(r#"{"client_id":"app-1","client_states":["state-v1"]}"#)
        .send()
        .await
        .unwrap();
    let store = SecretsManagerStore::new(sm.clone(), &id, Duration::from_millis(300)).unwrap();
    let first = store.load().await.unwrap();
    assert_eq!(first.client_id.as_deref(), Some("app-1"));
    assert_eq!(first.client_states[0].expose(), "state-v1");

    sm.put_secret_value()
        .secret_id(&id)
        .secret_string(r#"{"client_id":"app-1","client_states":["state-v2","state-v1"]}"#)
        .send()
        .await
        .unwrap();
    // Within the TTL the cached version is served (same parsed object).
    let cached = store.load().await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &cached));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let refreshed = store.load().await.unwrap();
    assert_eq!(refreshed.client_states.len(), 2);
    assert_eq!(refreshed.client_states[0].expose(), "state-v2");
}

#[tokio::test]
async fn missing_or_invalid_secret_is_a_clear_error() {
    let sm = client().await;
    let store =
        SecretsManagerStore::new(sm.clone(), unique("absent"), Duration::from_secs(60)).unwrap();
    let err = store.load().await.unwrap_err().to_string();
    assert!(err.starts_with("secret store unavailable"), "{err}");

    let id = unique("bad");
    sm.create_secret()
        .name(&id)
        .secret_string(r#"{"client_secret":"hunter2","surprise":1}"#)
        .send()
        .await
        .unwrap();
    let store = SecretsManagerStore::new(sm, &id, Duration::from_secs(60)).unwrap();
    let err = store.load().await.unwrap_err().to_string();
    assert!(err.contains("surprise"), "{err}");
    assert!(!err.contains("hunter2"), "secret value in error: {err}");
}

#[tokio::test]
async fn unreachable_secrets_manager_fails_cleanly() {
    let config = common::moto::unreachable_sdk_config().await;
    let store = SecretsManagerStore::new(
        aws_sdk_secretsmanager::Client::new(&config),
        "any",
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(store.load().await.is_err());
}

#[tokio::test]
async fn temporary_passwords_are_stored_tagged_and_swept_after_expiry() {
    let sm = client().await;
    let vault = SecretsManagerPasswordVault::new(sm.clone());
    let prefix = format!("{}/", unique("risk-responder/temporary-password"));
    let password = SecretString::new("Tmp-Pass-1234!abcd");
    let kept = vault
        .store(&format!("{prefix}keep"), &password, 24)
        .await
        .unwrap();
    let expired = vault
        .store(&format!("{prefix}expired"), &password, 0)
        .await
        .unwrap();

    let value = sm.get_secret_value().secret_id(&kept).send().await.unwrap();
    assert_eq!(value.secret_string(), Some("Tmp-Pass-1234!abcd"));
    let described = sm.describe_secret().secret_id(&kept).send().await.unwrap();
    assert!(
        described
            .tags()
            .iter()
            .any(|t| t.key() == Some(EXPIRES_AT_TAG))
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(vault.sweep_expired(&prefix).await.unwrap(), 1);
    assert!(
        sm.get_secret_value()
            .secret_id(&expired)
            .send()
            .await
            .is_err()
    );
    assert!(sm.get_secret_value().secret_id(&kept).send().await.is_ok());
}
