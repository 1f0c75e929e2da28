//! Printing results and errors for people and for scripts.

use serde::Serialize;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
    /// Markdown where a command writes a document (verify); text elsewhere.
    Markdown,
}

/// Prints one JSON document on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A one-line cause and a hint on stderr (or a JSON object on stdout).
pub fn report_error(error: &anyhow::Error, format: Format) {
    let cause = error
        .chain()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    let hint = hint_for(error);
    if format == Format::Json {
        let value = serde_json::json!({ "error": cause, "hint": hint });
        println!("{value}");
        return;
    }
    eprintln!("error: {cause}");
    if let Some(hint) = hint {
        eprintln!("hint: {hint}");
    }
}

/// The hint of the first error in the chain that knows one.
fn hint_for(error: &anyhow::Error) -> Option<String> {
    error.chain().find_map(|e| {
        if let Some(e) = e.downcast_ref::<shardline_topology::TopologyError>() {
            return Some(e.hint().to_string());
        }
        if let Some(e) = e.downcast_ref::<shardline_topology::ConnectError>() {
            return Some(e.hint());
        }
        if let Some(e) = e.downcast_ref::<shardline_testkit::TestkitError>() {
            return Some(e.hint().to_string());
        }
        if let Some(e) = e.downcast_ref::<Hint>() {
            return Some(e.hint.clone());
        }
        None
    })
}

/// An error of the CLI's own with a hint attached.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Hint {
    pub message: String,
    pub hint: String,
}

impl Hint {
    pub fn error(message: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
        Hint {
            message: message.into(),
            hint: hint.into(),
        }
        .into()
    }
}
