//! `drover token new --name NAME --scopes jobs:read,jobs:write,...`: makes an API token.
//!
//! Draws 32 bytes from the OS CSPRNG, encodes them as `drover_` + base64url(bytes + 4-byte
//! checksum) (see `drover_api::token`), prints the token once on the first line of stdout,
//! then the `drover.toml` entry for it, which holds only its SHA-256, its name, its scopes
//! and its format. The token is stored nowhere: lose it and make a new one.
//!
//! ```text
//! $ drover token new --name ci --scopes jobs:read,jobs:write
//! drover_q3J5...
//!
//! # The token above is shown once and stored nowhere. Add this entry to drover.toml,
//! # then send SIGHUP to the supervisor (or restart it):
//! [[api.tokens]]
//! name = "ci"
//! sha256 = "9f2c..."
//! scopes = ["jobs:read", "jobs:write"]
//! format = "drover-v1"
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use drover_api::token::ApiToken;
use drover_proto::config::{Scope, TokenEntry, TokenFormat};

/// Arguments of `drover token`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: TokenCommand,
}

/// The `drover token` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a new API token: print it once, and print its configuration entry.
    New(NewArgs),
}

/// Arguments of `drover token new`.
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Who will hold the token; audit events name this. Letters, digits, `.`, `_`, `-`; at
    /// most 64 characters.
    #[arg(long, value_parser = parse_name)]
    pub name: String,
    /// What the token may do, comma-separated: jobs:read, jobs:write, drivers:read,
    /// metrics:read, jobs:admin (every token's jobs, not only its own).
    #[arg(long, value_delimiter = ',', required = true)]
    pub scopes: Vec<Scope>,
}

fn parse_name(name: &str) -> Result<String, String> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err("1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit".to_owned())
    }
}

/// The configuration entry for `token`.
pub fn entry(token: &ApiToken, name: &str, scopes: &[Scope]) -> TokenEntry {
    let mut unique = Vec::new();
    for scope in scopes {
        if !unique.contains(scope) {
            unique.push(*scope);
        }
    }
    TokenEntry {
        name: name.to_owned(),
        sha256: token.sha256_hex(),
        scopes: unique,
        format: TokenFormat::DroverV1,
        revoked: false,
    }
}

/// The text `drover token new` prints: the token, then the entry as `drover.toml` TOML.
pub fn render(token: &ApiToken, entry: &TokenEntry) -> anyhow::Result<String> {
    #[derive(serde::Serialize)]
    struct Api<'a> {
        tokens: [&'a TokenEntry; 1],
    }
    #[derive(serde::Serialize)]
    struct Document<'a> {
        api: Api<'a>,
    }
    let toml = toml::to_string(&Document { api: Api { tokens: [entry] } })
        .context("formatting the configuration entry")?;
    Ok(format!(
        "{}\n\n# The token above is shown once and stored nowhere. Add this entry to drover.toml,\n\
         # then send SIGHUP to the supervisor (or restart it):\n{toml}",
        token.expose()
    ))
}

/// Runs `drover token`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        TokenCommand::New(new) => {
            let token = ApiToken::generate().context("drawing random bytes")?;
            let entry = entry(&token, &new.name, &new.scopes);
            let text = render(&token, &entry)?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes()).context("writing to standard output")?;
            out.flush().context("writing to standard output")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::config::Config;

    #[test]
    fn the_entry_holds_the_digest_never_the_token_and_is_a_valid_config() {
        let token = ApiToken::from_random(&[5; 32]);
        let entry = entry(&token, "ci", &[Scope::JobsRead, Scope::JobsWrite, Scope::JobsRead]);
        let text = render(&token, &entry).unwrap();
        assert_eq!(text.matches(token.expose()).count(), 1, "the token is printed exactly once");
        assert!(text.starts_with(token.expose()));
        let toml_part = text.split_once("\n\n").unwrap().1;
        assert!(!toml_part.contains(&token.expose()[7..]));
        let config: Config = toml::from_str(toml_part).unwrap();
        let parsed = &config.api.tokens[0];
        assert_eq!(parsed, &entry);
        assert_eq!(parsed.scopes, [Scope::JobsRead, Scope::JobsWrite]);
        // The server accepts it, and the token authenticates against it.
        let set = drover_api::auth::TokenSet::new(&config.api.tokens).unwrap();
        assert_eq!(&*set.authenticate(token.expose()).unwrap().name, "ci");
        // And it passes the configuration schema.
        let schema = drover_proto::schema::schema_for::<Config>();
        let value = serde_json::to_value(&config).unwrap();
        drover_transport::SchemaChecker::new(&schema).unwrap().check(&value).unwrap();
    }

    #[test]
    fn names_are_checked() {
        assert!(parse_name("ci-runner.2").is_ok());
        for bad in ["", "-ci", "ci runner", "ci/x", &"a".repeat(65)] {
            assert!(parse_name(bad).is_err(), "{bad:?}");
        }
    }
}
