//! Command-line and environment configuration shared by every binary.

use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

/// Exit code for invalid configuration (EX_USAGE, as linkerd2-proxy does).
pub const EXIT_CONFIG: i32 = 64;

/// Parses flags and `TRIBUTARY_*` variables. Help and version exit 0; invalid
/// configuration prints which setting is wrong and why, and exits 64.
///
/// Any setting read from a variable `TRIBUTARY_X` may instead come from a
/// file named by `TRIBUTARY_X_FILE` (its content, without the trailing line
/// break): Kubernetes mounts Secrets as files, which unlike variables no
/// process listing or crash dump shows.
pub fn parse<T: Parser>() -> T {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match file_settings(&T::command(), &args, |name| std::env::var_os(name)) {
        Ok(extra) => args.extend(extra),
        Err((setting, why)) => invalid(&setting, why),
    }
    match T::try_parse_from(args) {
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

/// `--flag=VALUE` for each `TRIBUTARY_X_FILE` set whose flag takes a value,
/// read from the file. The command's or the chosen subcommand's flags.
fn file_settings(
    command: &clap::Command,
    argv: &[std::ffi::OsString],
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Vec<std::ffi::OsString>, (String, String)> {
    // The subcommand named on the command line, if any: its flags go last.
    let chosen = argv
        .iter()
        .skip(1)
        .find(|a| !a.to_string_lossy().starts_with('-'))
        .and_then(|name| command.find_subcommand(name));
    let command = chosen.unwrap_or(command);
    let mut out = Vec::new();
    for arg in command.get_arguments() {
        let (Some(var), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let var = var.to_string_lossy();
        let file_var = format!("{var}_FILE");
        let Some(path) = env(&file_var) else {
            continue;
        };
        if !arg.get_action().takes_values() {
            return Err((file_var, "this setting cannot be read from a file".into()));
        }
        if env(&var).is_some() {
            return Err((file_var, format!("{var} is set too: set only one of them")));
        }
        let content = std::fs::read_to_string(&path).map_err(|e| {
            (
                file_var.clone(),
                format!("{}: {e}", std::path::Path::new(&path).display()),
            )
        })?;
        let value = content
            .strip_suffix("\r\n")
            .or_else(|| content.strip_suffix('\n'))
            .unwrap_or(&content);
        out.push(format!("--{long}={value}").into());
    }
    Ok(out)
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
        .map_err(|_| format!("{s:?} is not a duration such as 250ms, 5s, 2m or 30d"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

/// A retention period: a duration of at least one hour (`30d`, `36h`), or
/// `0` to keep everything.
pub fn parse_retention(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if !d.is_zero() && d < Duration::from_secs(3600) {
        return Err(format!(
            "{s:?}: a retention is 0 (keep everything) or at least 1h"
        ));
    }
    Ok(d)
}

/// A size: `512`, `64KiB`, `256MiB`, `1GiB` (binary units; `KB`, `MB`,
/// `GB` are read as the same).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, ""),
    };
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 64KiB or 256MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512"), Ok(512));
        assert_eq!(parse_bytes("64KiB"), Ok(65_536));
        assert_eq!(parse_bytes("256MiB"), Ok(268_435_456));
        assert_eq!(parse_bytes("1 GiB"), Ok(1 << 30));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }

    #[derive(Debug, clap::Parser)]
    struct Demo {
        #[arg(long, env = "DEMO_URL")]
        url: Option<String>,
        #[arg(long, env = "DEMO_FLAG")]
        flag: bool,
    }

    #[test]
    fn settings_from_files() {
        use clap::CommandFactory as _;
        let dir = std::env::temp_dir().join(format!("tributary-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("url");
        std::fs::write(&file, "postgres://u:secret@h/db\n").unwrap();
        let argv: Vec<std::ffi::OsString> = vec!["demo".into()];
        let path = file.clone();
        let extra = file_settings(&Demo::command(), &argv, |v| {
            (v == "DEMO_URL_FILE").then(|| path.clone().into_os_string())
        })
        .unwrap();
        assert_eq!(
            extra,
            vec![std::ffi::OsString::from("--url=postgres://u:secret@h/db")]
        );
        let both = file_settings(&Demo::command(), &argv, |v| {
            matches!(v, "DEMO_URL_FILE" | "DEMO_URL").then(|| path.clone().into_os_string())
        });
        assert!(
            both.is_err_and(|(s, why)| s == "DEMO_URL_FILE" && why.contains("DEMO_URL is set too"))
        );
        let missing = file_settings(&Demo::command(), &argv, |v| {
            (v == "DEMO_URL_FILE").then(|| "/nonexistent/x".into())
        });
        assert!(missing.is_err());
        let flag = file_settings(&Demo::command(), &argv, |v| {
            (v == "DEMO_FLAG_FILE").then(|| path.clone().into_os_string())
        });
        assert!(flag.is_err());
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5h"), Ok(Duration::from_secs(5 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn retentions() {
        assert_eq!(parse_retention("0"), Ok(Duration::ZERO));
        assert_eq!(parse_retention("36h"), Ok(Duration::from_secs(36 * 3600)));
        assert!(parse_retention("30m").is_err());
    }
}
