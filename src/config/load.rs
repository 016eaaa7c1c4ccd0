//! Loading the command line: a flag wins over its environment variable,
//! which wins over the `--config` file, which wins over the default.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use super::{ConfigError, bad};

/// Makes the `--config` file's settings (`--config FILE` in `args`, or
/// TENANT_STATUS_CONFIG) and the old names of variables the defaults of the
/// `serve` and `check-config` subcommands of `cmd`, so that a flag wins over
/// the environment, which wins over the file. `cmd` is the whole command
/// line's definition (`crate::cli::Cli`'s), which this module does not name.
pub fn with_file_defaults(
    mut cmd: clap::Command,
    args: &[OsString],
) -> Result<clap::Command, ConfigError> {
    let file =
        config_flag(args).or_else(|| std::env::var_os("TENANT_STATUS_CONFIG").map(PathBuf::from));
    if let Some(path) = file {
        let serve = cmd
            .find_subcommand("serve")
            .expect("serve is a subcommand")
            .clone();
        let settings = read_config_file(&serve, &path)?;
        for sub in ["serve", "check-config"] {
            cmd = cmd.mut_subcommand(sub, |mut c| {
                for (id, values) in &settings {
                    c = c.mut_arg(id, |a| a.default_values(values.clone()));
                }
                c
            });
        }
    }
    // `--tenant`'s variable was once TENANT_STATUS_TENANTS, the one not
    // named after its flag; it still counts, below the current name.
    if std::env::var_os("TENANT_STATUS_TENANT").is_none()
        && let Some(old) = std::env::var_os("TENANT_STATUS_TENANTS")
    {
        let values: Vec<String> = old
            .to_string_lossy()
            .split(',')
            .map(str::to_owned)
            .collect();
        for sub in ["serve", "check-config"] {
            cmd = cmd.mut_subcommand(sub, |c| {
                c.mut_arg("tenants", |a| a.default_values(values.clone()))
            });
        }
    }
    // `--superoffice-max-in-flight` was `--poll-concurrency`, with its
    // variable; the old variable still counts, below the new one.
    if std::env::var_os("TENANT_STATUS_SUPEROFFICE_MAX_IN_FLIGHT").is_none()
        && let Some(old) = std::env::var_os("TENANT_STATUS_POLL_CONCURRENCY")
    {
        let old = old.to_string_lossy().into_owned();
        for sub in ["serve", "check-config"] {
            cmd = cmd.mut_subcommand(sub, |c| {
                c.mut_arg("superoffice_max_in_flight", |a| {
                    a.default_value(old.clone())
                })
            });
        }
    }
    Ok(cmd)
}

/// The value of `--config` on the command line, if any.
fn config_flag(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(v) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(v));
        }
    }
    None
}

/// Reads a TOML configuration file into (argument id, values) pairs,
/// refusing settings `serve` does not have.
fn read_config_file(
    serve: &clap::Command,
    path: &Path,
) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let text = crate::files::read_text(path)
        .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        bad(
            "--config",
            format!("{} is not valid TOML: {e}", path.display()),
        )
    })?;
    let mut out = Vec::new();
    for (key, value) in table {
        let long = key.replace('_', "-");
        let arg = serve
            .get_arguments()
            .find(|a| {
                let named = a.get_long() == Some(long.as_str())
                    || a.get_all_aliases()
                        .is_some_and(|old| old.contains(&long.as_str()));
                named && long != "config" && long != "help"
            })
            .ok_or_else(|| {
                bad(
                    "--config",
                    format!(
                        "{}: {key:?} is not a setting of tenant-status serve (see serve --help)",
                        path.display()
                    ),
                )
            })?;
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(bad(
                    "--config",
                    format!(
                        "{}: {key} must be a string, number or list of them, not {}",
                        path.display(),
                        other.type_str()
                    ),
                )),
            }
        };
        let values = match &value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<Result<Vec<_>, _>>()?,
            v => vec![scalar(v)?],
        };
        out.push((arg.get_id().to_string(), values));
    }
    Ok(out)
}
