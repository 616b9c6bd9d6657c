//! `hub backup` and `hub restore`.

use super::*;

/// `hub backup`: a consistent backup. Through the running hub when one runs (it holds the
/// store), else directly. Returns where the backup is.
pub async fn backup(config: &Config, out: Option<&Path>) -> Result<PathBuf, CliError> {
    if let Some(out) = out
        && out.exists()
    {
        return Err(CliError::Exists(out.to_owned()));
    }
    let made = match RunningHub::find(config).await? {
        Some(hub) => {
            let answer = hub.call(Method::POST, "/api/v1/backups", None).await?;
            let made: crate::api::BackupMade =
                serde_json::from_slice(&answer).map_err(|e| CliError::Answer(e.to_string()))?;
            eprintln!("backup made by the running hub");
            config.data.dir.join(made.dir)
        }
        None => {
            let store = open_store(config)?;
            let made = crate::backup::backup_in_place(
                &store,
                config.data.engine,
                &config.data.dir,
                crate::clock::now_ms(),
            )?;
            eprintln!(
                "no hub runs on {}: backup made from the store directly",
                config.api.listen
            );
            made.dir
        }
    };
    match out {
        Some(out) => {
            std::fs::rename(&made, out).map_err(|source| CliError::File {
                path: out.to_owned(),
                source,
            })?;
            Ok(out.to_owned())
        }
        None => Ok(made),
    }
}

/// `hub restore`: puts a backup into the data directory; the hub must be stopped.
pub async fn restore(config: &Config, from: &Path, force: bool) -> Result<(), CliError> {
    if RunningHub::find(config).await?.is_some() {
        return Err(CliError::Running(config.api.listen.clone()));
    }
    crate::backup::restore(from, config.data.engine, &config.data.dir, force)?;
    Ok(())
}
