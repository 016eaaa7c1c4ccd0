//! The tokio runtime the service runs on, configured on purpose rather than
//! left at `#[tokio::main]`'s defaults. `main` builds it, and so does the
//! bench when it runs the service as a child process, so what the bench
//! measures is what ships.
//!
//! The one setting that differs from tokio's defaults is the LIFO slot,
//! turned off: with it, a task woken by another runs next on the same
//! worker. A change reaches thousands of watch streams; each stream's task
//! wakes its connection's task, which then ran at once and wrote a few
//! frames per write instead of a connection's worth. Turned off, the woken
//! task goes to the back of the worker's queue, the other streams of the
//! connection queue their frames first, and one write carries them all.
//! BENCHMARKS.md ("Choices made for speed, measured") has the figures.
//!
//! `disable_lifo_slot` is one of tokio's unstable settings: it exists only
//! when the build passes `--cfg tokio_unstable`, which the repository's
//! `.cargo/config.toml` does. Cargo.toml pins tokio's minor version,
//! because an unstable setting may change or go in any tokio release.
//!
//! Three environment variables override the settings, for measuring them
//! (the bench sets them on the service's process) and for an operator
//! on a machine unlike the one measured; README's configuration section
//! lists them.

// Without the cfg, tokio has no `disable_lifo_slot` and the service would
// run with the slot on, slower by the figures in BENCHMARKS.md: refuse to
// build instead. cargo-fuzz sets RUSTFLAGS itself (which replaces the
// config's), and the fuzz targets never run the service; so its builds
// leave this module out (see lib.rs).
#[cfg(not(tokio_unstable))]
compile_error!(
    "tenant-status turns tokio's LIFO slot off, which needs `--cfg tokio_unstable`: \
     build inside the repository (its .cargo/config.toml sets it), or add \
     `--cfg tokio_unstable` to RUSTFLAGS if you set RUSTFLAGS yourself"
);

use std::ffi::OsString;

/// `on` or `off`: tokio's LIFO slot (default off).
pub const LIFO_SLOT_VAR: &str = "TENANT_STATUS_RUNTIME_LIFO_SLOT";
/// Scheduler ticks between checks for I/O and timers (default tokio's, 61).
pub const EVENT_INTERVAL_VAR: &str = "TENANT_STATUS_RUNTIME_EVENT_INTERVAL";
/// Scheduler ticks between looks at the shared queue (default tokio's,
/// which tunes itself).
pub const GLOBAL_QUEUE_INTERVAL_VAR: &str = "TENANT_STATUS_RUNTIME_GLOBAL_QUEUE_INTERVAL";

/// The runtime's settings that differ from tokio's defaults or may be
/// overridden.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// tokio's LIFO slot; off unless asked for.
    pub lifo_slot: bool,
    /// `None`: tokio's default.
    pub event_interval: Option<u32>,
    /// `None`: tokio's default.
    pub global_queue_interval: Option<u32>,
}

impl Settings {
    /// The defaults, overridden by this process's environment.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// The defaults, overridden by whatever `lookup` finds for each
    /// variable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, String> {
        let text = |name: &str| -> Result<Option<String>, String> {
            match lookup(name) {
                None => Ok(None),
                Some(v) => v
                    .into_string()
                    .map(|s| Some(s.trim().to_owned()))
                    .map_err(|_| format!("{name} is not valid UTF-8")),
            }
        };
        let ticks = |name: &str| -> Result<Option<u32>, String> {
            match text(name)? {
                None => Ok(None),
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => match s.parse::<u32>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(format!(
                        "{name} must be a whole number of scheduler ticks, 1 or more; it is {s:?}"
                    )),
                },
            }
        };
        let mut settings = Self::default();
        match text(LIFO_SLOT_VAR)?.as_deref() {
            None | Some("") => {}
            Some("on") => settings.lifo_slot = true,
            Some("off") => settings.lifo_slot = false,
            Some(other) => {
                return Err(format!(
                    "{LIFO_SLOT_VAR} must be \"on\" or \"off\"; it is {other:?}"
                ));
            }
        }
        settings.event_interval = ticks(EVENT_INTERVAL_VAR)?;
        settings.global_queue_interval = ticks(GLOBAL_QUEUE_INTERVAL_VAR)?;
        Ok(settings)
    }

    /// A multi-thread runtime with every driver enabled and these settings.
    pub fn build(&self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all();
        if !self.lifo_slot {
            builder.disable_lifo_slot();
        }
        // Zero is refused when the settings are read; tokio panics on it.
        if let Some(n) = self.event_interval.filter(|n| *n > 0) {
            builder.event_interval(n);
        }
        if let Some(n) = self.global_queue_interval.filter(|n| *n > 0) {
            builder.global_queue_interval(n);
        }
        builder.build()
    }
}

/// The service's runtime: the settings from the environment, built.
/// Errors are sentences for the operator.
pub fn build() -> Result<tokio::runtime::Runtime, String> {
    let settings = Settings::from_env()?;
    settings
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Result<Settings, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        })
    }

    #[test]
    fn the_lifo_slot_is_off_unless_asked_for() {
        assert_eq!(with(&[]).unwrap(), Settings::default());
        assert!(!Settings::default().lifo_slot);
        assert!(with(&[(LIFO_SLOT_VAR, "on")]).unwrap().lifo_slot);
        assert!(!with(&[(LIFO_SLOT_VAR, "off")]).unwrap().lifo_slot);
        assert!(!with(&[(LIFO_SLOT_VAR, "")]).unwrap().lifo_slot);
    }

    #[test]
    fn intervals_are_read_and_zero_or_words_are_refused_with_a_sentence() {
        let s = with(&[
            (EVENT_INTERVAL_VAR, "31"),
            (GLOBAL_QUEUE_INTERVAL_VAR, " 7 "),
        ])
        .unwrap();
        assert_eq!(s.event_interval, Some(31));
        assert_eq!(s.global_queue_interval, Some(7));
        for bad in ["0", "-1", "many", "1.5"] {
            let e = with(&[(EVENT_INTERVAL_VAR, bad)]).unwrap_err();
            assert!(
                e.contains(EVENT_INTERVAL_VAR) && e.contains("1 or more"),
                "{e}"
            );
            let e = with(&[(GLOBAL_QUEUE_INTERVAL_VAR, bad)]).unwrap_err();
            assert!(e.contains(GLOBAL_QUEUE_INTERVAL_VAR), "{e}");
        }
        let e = with(&[(LIFO_SLOT_VAR, "yes")]).unwrap_err();
        assert!(e.contains("\"on\" or \"off\""), "{e}");
    }

    #[test]
    fn every_setting_builds_a_runtime_that_runs_tasks() {
        for s in [
            Settings::default(),
            Settings {
                lifo_slot: true,
                event_interval: Some(1),
                global_queue_interval: Some(1),
            },
        ] {
            let rt = s.build().unwrap();
            let got = rt.block_on(async { tokio::spawn(async { 40 + 2 }).await.unwrap() });
            assert_eq!(got, 42);
        }
    }
}
