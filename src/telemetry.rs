//! Logging set-up: human-readable text by default, JSON lines on request.
//! `RUST_LOG` filters by level and target (`info`, `authgate=debug,warn`;
//! default `info`).

use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let (filter, refused) = filter(std::env::var("RUST_LOG").ok().as_deref());
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.finish().with(filter).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(filter)
            .try_init(),
    };
    if let Some(why) = refused {
        tracing::warn!(error = %why, "RUST_LOG not understood; logging at info");
    }
}

/// The filter `RUST_LOG` asks for: comma-separated `level` and `target=level`
/// directives (tracing's `Targets` syntax). Unset or empty: `info`. One it
/// cannot read: `info`, and why it was refused.
pub fn filter(rust_log: Option<&str>) -> (Targets, Option<String>) {
    let info = Targets::new().with_default(tracing::Level::INFO);
    match rust_log.map(str::trim) {
        None | Some("") => (info, None),
        Some(spec) => match spec.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (info, Some(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use tracing::level_filters::LevelFilter;
    use tracing::Level;

    use super::*;

    #[test]
    fn rust_log_sets_a_default_level_and_per_target_levels() {
        let (t, refused) = filter(Some("authgate=debug,hyper=warn,error"));
        assert!(refused.is_none());
        assert!(t.would_enable("authgate::routes", &Level::DEBUG));
        assert!(!t.would_enable("authgate::routes", &Level::TRACE));
        assert!(!t.would_enable("hyper::proto", &Level::INFO));
        assert!(t.would_enable("hyper::proto", &Level::WARN));
        assert!(!t.would_enable("tokio_postgres", &Level::WARN));
        assert!(t.would_enable("tokio_postgres", &Level::ERROR));
    }

    #[test]
    fn unset_empty_or_unreadable_is_info() {
        for spec in [None, Some(""), Some("  ")] {
            let (t, refused) = filter(spec);
            assert!(refused.is_none());
            assert_eq!(t.default_level(), Some(LevelFilter::INFO));
        }
        let (t, refused) = filter(Some("authgate=loud"));
        assert!(refused.is_some());
        assert_eq!(t.default_level(), Some(LevelFilter::INFO));
        assert!(!t.would_enable("authgate", &Level::DEBUG));
    }
}
