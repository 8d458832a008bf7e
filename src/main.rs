//! The `kube-event` command: parses the command line, reads the configuration, sets up
//! logging, runs, and maps the outcome to an exit code (0 clean stop, 1 runtime failure,
//! 2 usage or configuration error). Errors are printed here and only here.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
kube-event: ships every occurrence of every Kubernetes Event to Grafana Loki

Usage: kube-event [--config PATH] [--stdout] [--check] [--version] [--help]
       kube-event --show-batch FILE

Options:
  --config PATH  the configuration file (else $KUBE_EVENT_CONFIG, else ./kube-event.conf,
                 else /etc/kube-event/kube-event.conf)
  --stdout       print each line that would be pushed, one per line, and push nothing
                 (LOKI_URL is not needed)
  --check        check the configuration, the API server, Loki and DATA_DIR, print one
                 line per check (OK or FAIL with the fix), exit 0 only if all pass
  --show-batch FILE
                 print the push body of a spooled batch (DATA_DIR/spool/<seq>.batch) as
                 Loki's JSON, whatever LOKI_COMPRESSION it was spooled with, and exit
  --version      print the version and exit
  --help         print this help and exit

Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error.
See README.md for the configuration keys.";

struct Args {
    config: Option<PathBuf>,
    stdout: bool,
    check: bool,
    show_batch: Option<PathBuf>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut args = Args {
        config: None,
        stdout: false,
        check: false,
        show_batch: None,
    };
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        let a = a
            .into_string()
            .map_err(|a| format!("argument is not valid UTF-8: {a:?}"))?;
        match a.as_str() {
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--version" | "-V" => {
                println!("kube-event {}", version());
                return Ok(None);
            }
            "--stdout" => args.stdout = true,
            "--check" => args.check = true,
            "--config" | "-c" => {
                let p = it.next().ok_or("--config needs a path")?;
                args.config = Some(PathBuf::from(p));
            }
            "--show-batch" => {
                let p = it.next().ok_or("--show-batch needs a file")?;
                args.show_batch = Some(PathBuf::from(p));
            }
            s if s.starts_with("--config=") => {
                args.config = Some(PathBuf::from(&s["--config=".len()..]));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(args))
}

fn version() -> String {
    match option_env!("KUBE_EVENT_GIT_COMMIT") {
        Some(c) if !c.is_empty() => format!("{} ({c})", env!("CARGO_PKG_VERSION")),
        _ => env!("CARGO_PKG_VERSION").to_string(),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-event: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &args.show_batch {
        return match kube_event::spool::batch_json(path) {
            Ok(json) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                match out.write_all(&json).and_then(|()| out.write_all(b"\n")) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(_) => ExitCode::from(1),
                }
            }
            Err(e) => {
                eprintln!("kube-event: {e}");
                ExitCode::from(1)
            }
        };
    }
    let env = |k: &str| std::env::var(k).ok();
    let config = kube_event::config::locate(args.config.as_deref(), &env)
        .and_then(|file| kube_event::config::load(file.as_deref(), &env));
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            if args.check {
                println!("FAIL  config: {e}\n      fix: correct the value named above");
            }
            eprintln!("kube-event: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        // Warnings (unknown keys, ...) go to stderr; the report to stdout.
        env_logger::Builder::new()
            .parse_filters("warn")
            .target(env_logger::Target::Stderr)
            .init();
        for w in &config.warnings {
            log::warn!("{w}");
        }
        let all_ok = kube_event::check::run(&config, &mut std::io::stdout());
        return if all_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    // LOG_LEVEL is the level of kube-event's own messages; libraries only say warnings and
    // errors (their debug output is wire detail). RUST_LOG, when set, replaces both.
    let target = match &config.log_file {
        None => env_logger::Target::Stderr,
        Some(path) => match kube_event::logfile::RotatingFile::open(path, config.log_keep_days) {
            Ok(f) => env_logger::Target::Pipe(Box::new(f)),
            Err(e) => {
                eprintln!(
                    "kube-event: LOG_FILE {}: cannot write it: {e}",
                    path.display()
                );
                return ExitCode::from(2);
            }
        },
    };
    env_logger::Builder::new()
        .parse_filters(&format!("warn,kube_event={}", config.log_level))
        .parse_env("RUST_LOG")
        .format_timestamp_millis()
        .target(target)
        .init();
    log::info!(
        "kube-event {} starting; config {}",
        version(),
        config
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "none (defaults and environment)".into())
    );
    for w in &config.warnings {
        log::warn!("{w}");
    }
    if !args.stdout && config.loki.url.is_none() {
        eprintln!("kube-event: LOKI_URL is not set (it is required unless --stdout)");
        return ExitCode::from(2);
    }
    match kube_event::run(config, args.stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logging is set up by now and goes to stderr: one line, once.
            log::error!("{e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
