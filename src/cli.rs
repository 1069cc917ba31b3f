//! The command line: the commands, and the settings (`crate::settings`) as their flags.

use crate::db::Database;
use crate::settings::Settings;
use crate::startup::Application;
use crate::telemetry;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "upsertd", version, about = "Writes that are safe to repeat, on PostgreSQL.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Check keys, constraints, counters and audio files. Exit 0 clean, 1 on a finding, 2 if it could not check.
    Audit(crate::ops::audit::AuditArgs),
    /// Load a mongoexport of the legacy apps, merging duplicates. Exit 0, 1 if documents were rejected, 2 on failure.
    Import(crate::ops::import::ImportArgs),
}

/// Exit status of `audit` and `import` when they could not do their job at all.
const COULD_NOT_RUN: u8 = 2;

/// Without tokens anyone who can reach the port can write, so only loopback is allowed unless
/// the operator says otherwise.
fn check_exposure(settings: &Settings) -> Result<(), String> {
    let open = !crate::auth::ApiTokens::parse(settings.api_tokens.as_deref()).enabled();
    if open && !settings.bind.ip().is_loopback() && !settings.allow_unauthenticated {
        return Err(format!(
            "refusing to listen on {} without API_TOKENS: anyone who can reach it could write. \
             Set API_TOKENS, bind to 127.0.0.1, or pass --allow-unauthenticated",
            settings.bind
        ));
    }
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init();
    let command = cli.command.unwrap_or(Command::Serve);
    if let (Command::Serve, Err(why)) = (&command, check_exposure(&cli.settings)) {
        eprintln!("upsertd: {why}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("upsertd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = cli.settings;
    // Each command reports its own exit status; an error exits with the command's failure status.
    let (result, failure) = runtime.block_on(async {
        match command {
            Command::Serve => (serve(settings).await.map(|()| ExitCode::SUCCESS), ExitCode::FAILURE),
            Command::Migrate => (migrate(settings).await.map(|()| ExitCode::SUCCESS), ExitCode::FAILURE),
            Command::Audit(args) => (crate::ops::audit::command(&settings, &args).await, ExitCode::from(COULD_NOT_RUN)),
            Command::Import(args) => {
                (crate::ops::import::command(&settings, &args).await, ExitCode::from(COULD_NOT_RUN))
            }
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("upsertd: {e:#}");
        failure
    })
}

async fn migrate(settings: Settings) -> anyhow::Result<()> {
    let database = Database::visit(&settings).await?;
    let result = database.migrate().await;
    database.shutdown().await?;
    result?;
    println!("migrations applied");
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let database = Database::open(&settings).await?;
    let result = serve_with(&settings, &database).await;
    let stopped = database.shutdown().await;
    result.and(stopped)
}

async fn serve_with(settings: &Settings, database: &Database) -> anyhow::Result<()> {
    if !settings.no_migrate {
        database.migrate().await?;
    }
    let pool = database.pool(settings);
    let app = Application::build(settings, pool.clone()).await.context("cannot start the HTTP server")?;
    println!("upsertd listening on http://{}", app.address());
    println!("database: {}", database.display);
    let server = app.handle();
    // An embedded cluster that crashed and cannot be started again ends the process (exit
    // status 1): then whatever runs upsertd restarts it, instead of a server that can only
    // answer 503.
    let gave_up = async {
        match database.supervise() {
            Some(gave_up) => gave_up.await.ok(),
            None => None,
        }
    };
    tokio::select! {
        served = app.run_until_stopped() => served?,
        Some(error) = gave_up => {
            server.stop(true).await;
            pool.close().await;
            return Err(error.context("stopping: the database is gone"));
        }
    }
    pool.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_public_bind_needs_tokens_or_an_explicit_opt_out() {
        let settings = |args: &[&str]| Settings::from_args(args.iter().copied());
        assert!(check_exposure(&settings(&["--bind", "127.0.0.1:0"])).is_ok());
        assert!(check_exposure(&settings(&["--bind", "0.0.0.0:8080"])).is_err());
        assert!(check_exposure(&settings(&["--bind", "0.0.0.0:8080", "--api-tokens", "t"])).is_ok());
        assert!(check_exposure(&settings(&["--bind", "0.0.0.0:8080", "--allow-unauthenticated"])).is_ok());
    }
}
