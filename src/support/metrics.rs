//! Figures for CloudWatch in its embedded metric format: in Lambda, one JSON document per line
//! on stdout, which CloudWatch Logs turns into metrics (no `PutMetricData` call, no permission);
//! elsewhere the same figures are an ordinary log line.

use serde_json::{Map, Value, json};

/// The namespace of every figure.
pub const NAMESPACE: &str = "risk-responder";

/// Emits `figures` (name, value in seconds) with the dimension `dimension` = `value`: an
/// embedded-metric document on stdout in Lambda, a log line elsewhere.
pub fn seconds(figures: &[(&str, f64)], dimension: (&str, &str)) {
    if std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some() {
        println!("{}", document(figures, dimension, now_ms()));
    } else {
        for (name, value) in figures {
            tracing::info!(
                metric = name,
                seconds = value,
                dimension = dimension.1,
                "figure"
            );
        }
    }
}

/// The embedded-metric document of `figures` at `timestamp_ms` (milliseconds since the epoch).
pub fn document(figures: &[(&str, f64)], dimension: (&str, &str), timestamp_ms: i64) -> Value {
    let metrics: Vec<Value> = figures
        .iter()
        .map(|(name, _)| json!({ "Name": name, "Unit": "Seconds" }))
        .collect();
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[dimension.0]],
                "Metrics": metrics,
            }],
        }),
    );
    root.insert(dimension.0.into(), json!(dimension.1));
    for (name, value) in figures {
        root.insert((*name).into(), json!(value));
    }
    Value::Object(root)
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_names_each_figure_its_unit_and_dimension_at_the_root() {
        let doc = document(
            &[("TimeToContain", 12.5), ("TimeToRemediate", 40.0)],
            ("Mode", "enforce"),
            1_700_000_000_000,
        );
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000i64);
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "risk-responder");
        assert_eq!(directive["Dimensions"], json!([["Mode"]]));
        assert_eq!(
            directive["Metrics"],
            json!([
                { "Name": "TimeToContain", "Unit": "Seconds" },
                { "Name": "TimeToRemediate", "Unit": "Seconds" }
            ])
        );
        // Every referenced member is on the root node, as the specification requires.
        assert_eq!(doc["Mode"], "enforce");
        assert_eq!(doc["TimeToContain"], 12.5);
        assert_eq!(doc["TimeToRemediate"], 40.0);
    }
}
