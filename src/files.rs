//! The operator's files that are read as text: configuration and
//! credentials without the byte order mark Windows tools put at their
//! start, and token files (one token a line; blank lines and lines starting
//! with '#' are skipped), read the same way by the server
//! (`--grpc-token-file`: the tokens callers may present) and by the client
//! commands (`--token-file`: the token they present).

use std::path::Path;

use subtle::{Choice, ConstantTimeEq};

/// Reads a text file, without the UTF-8 byte order mark that Windows tools
/// put at its start.
pub(crate) fn read_text(path: &Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    Ok(match text.strip_prefix('\u{feff}') {
        Some(rest) => rest.to_owned(),
        None => text,
    })
}

/// The tokens of a token file, in order: at least one, or why not. The
/// message names the file, never a token.
pub(crate) fn token_lines(path: &Path) -> Result<Vec<String>, String> {
    let text = read_text(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(format!("{} holds no token", path.display()));
    }
    Ok(tokens)
}

/// The bearer tokens callers may present (`--grpc-token-file`): one a
/// line; blank lines and lines starting with '#' are skipped.
pub struct BearerTokens(Vec<Vec<u8>>);

impl std::fmt::Debug for BearerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        write!(f, "BearerTokens({} tokens)", self.0.len())
    }
}

impl BearerTokens {
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let tokens: Vec<Vec<u8>> = token_lines(path)?
            .into_iter()
            .map(String::into_bytes)
            .collect();
        if let Some(short) = tokens.iter().find(|t| t.len() < 16) {
            return Err(format!(
                "{} holds a token of {} characters; use at least 16",
                path.display(),
                short.len()
            ));
        }
        Ok(Self(tokens))
    }

    /// Whether `presented` is one of the tokens, compared in time that does
    /// not depend on where they differ (subtle's constant-time equality),
    /// and against every token whichever matches.
    pub fn accepts(&self, presented: &[u8]) -> bool {
        self.0
            .iter()
            .fold(Choice::from(0), |found, t| {
                found | t.as_slice().ct_eq(presented)
            })
            .into()
    }
}
