//! Command-line and environment configuration shared by every binary.

use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

/// Exit code for invalid configuration (EX_USAGE, as linkerd2-proxy does).
pub const EXIT_CONFIG: i32 = 64;

/// Parses flags and `TRIBUTARY_*` variables. Help and version exit 0; invalid
/// configuration prints which setting is wrong and why, and exits 64.
pub fn parse<T: Parser>() -> T {
    match T::try_parse() {
        Ok(config) => config,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => EXIT_CONFIG,
            };
            // Printing may fail only when stderr is gone; nothing left to tell then.
            let _ = e.print();
            std::process::exit(code);
        }
    }
}

/// Reports a setting that parsed but makes no sense, and exits 64.
pub fn invalid(setting: &str, why: impl std::fmt::Display) -> ! {
    eprintln!("error: invalid configuration: {setting}: {why}");
    std::process::exit(EXIT_CONFIG);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging and tracing settings.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log filter, in tracing's EnvFilter syntax.
    #[arg(long = "log", env = "TRIBUTARY_LOG", default_value = "info")]
    pub log_filter: String,
    /// Log line format.
    #[arg(long, env = "TRIBUTARY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint to export traces to (e.g. http://127.0.0.1:4317);
    /// traces are still made (their ids are stored) but not exported when unset.
    #[arg(long, env = "TRIBUTARY_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// How long a stopping service may take to drain in-flight work; keep it
/// below the pod's terminationGracePeriodSeconds.
#[derive(Debug, Clone, Args)]
pub struct ShutdownArgs {
    #[arg(long, env = "TRIBUTARY_SHUTDOWN_GRACE", value_parser = parse_duration, default_value = "20s")]
    pub shutdown_grace: Duration,
}

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 250ms, 5s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("x").is_err());
    }
}
