//! AWS SDK errors in words, for logs and messages (never request contents).

/// A readable AWS SDK error (service code and message), without request contents.
pub fn aws_error<E: std::error::Error>(error: &E) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text = format!("{text}: {e}");
        source = e.source();
    }
    text
}
