//! Logging with `tracing`: text for people or JSON for collectors, filtered by RUST_LOG.

use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogFormat};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// RUST_LOG does not parse.
    #[error("RUST_LOG={filter:?} is not a valid log filter ({source}); use e.g. RUST_LOG=info or RUST_LOG=ciliate_agent=debug,info")]
    Filter {
        /// The filter given.
        filter: String,
        /// The parse error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber was installed already.
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// Installs the global subscriber: logs go to stderr in the configured format.
pub fn init(config: &Config) -> Result<(), LoggingError> {
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|source| LoggingError::Filter {
        filter: config.log_filter.clone(),
        source,
    })?;
    // Colours for a terminal only: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let installed = match config.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    installed.map_err(|e| LoggingError::Install(e.to_string()))
}
