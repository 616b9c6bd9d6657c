//! `hub token ...`: make, list and revoke API tokens, through the running hub or in the store.

use super::*;

/// What `hub token` does.
#[derive(Debug, Clone)]
pub enum TokenAction {
    /// Make a token; print its secret alone on stdout.
    Create(TokenSpec),
    /// List tokens, as a table or as JSON.
    List {
        /// JSON instead of a table.
        json: bool,
    },
    /// Revoke the token with this id.
    Revoke(String),
}

/// Runs a `hub token` command.
pub async fn token(config: &Config, action: TokenAction) -> Result<(), CliError> {
    // What the operator typed is checked before anything is opened or asked.
    match &action {
        TokenAction::Create(spec) => {
            spec.validate(0).map_err(|e| CliError::Invalid(e.0))?;
        }
        TokenAction::Revoke(id) => check_id(id)?,
        TokenAction::List { .. } => {}
    }
    match Target::find(config).await? {
        Target::Hub(hub) => token_remote(&hub, action).await,
        Target::Store(store) => {
            let registry = TokenRegistry::open(&config.data.dir.join("token.key"), store)?;
            blocking(move || token_local(&registry, action)).await
        }
    }
}

pub(super) async fn token_remote(hub: &RunningHub, action: TokenAction) -> Result<(), CliError> {
    match action {
        TokenAction::Create(spec) => {
            #[derive(Serialize)]
            struct NewTokenBody<'a> {
                name: &'a str,
                scopes: &'a [String],
                devices: &'a [String],
                expires: Option<&'a str>,
            }
            let body = serde_json::to_string(&NewTokenBody {
                name: &spec.name,
                scopes: &spec.scopes,
                devices: &spec.devices,
                expires: spec.expires.as_deref(),
            })
            .map_err(|e| CliError::Answer(e.to_string()))?;
            let answer = hub.call(Method::POST, "/api/v1/tokens", Some(body)).await?;
            let created: CreatedToken = serde_json::from_slice(&answer)
                .map_err(|e| CliError::Answer(format!("token: {e}")))?;
            eprintln!(
                "hub: made token {} ({}); its secret is shown once, below",
                created.id, created.name
            );
            println!("{}", created.secret);
            Ok(())
        }
        TokenAction::List { json } => {
            let answer = hub.call(Method::GET, "/api/v1/tokens", None).await?;
            let list: TokenList = serde_json::from_slice(&answer)
                .map_err(|e| CliError::Answer(format!("token list: {e}")))?;
            print_list(&list, json)
        }
        TokenAction::Revoke(id) => {
            check_id(&id)?;
            hub.call(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
                .await?;
            eprintln!("hub: revoked token {id}");
            Ok(())
        }
    }
}

pub(super) fn token_local(registry: &TokenRegistry, action: TokenAction) -> Result<(), CliError> {
    match action {
        TokenAction::Create(spec) => {
            let record = spec
                .validate(crate::clock::now_ms())
                .map_err(|e| CliError::Invalid(e.0))?;
            let (secret, info) = registry.create_token(record)?;
            eprintln!(
                "hub: made token {} ({}); its secret is shown once, below",
                info.id, info.record.name
            );
            println!("{secret}");
            Ok(())
        }
        TokenAction::List { json } => {
            let tokens = registry.list().iter().map(TokenSummary::new).collect();
            print_list(&TokenList { tokens }, json)
        }
        TokenAction::Revoke(id) => {
            check_id(&id)?;
            match registry.revoke(&id)? {
                Some(_) => {
                    eprintln!("hub: revoked token {id}");
                    Ok(())
                }
                None => Err(CliError::Invalid(format!("no token {id:?}"))),
            }
        }
    }
}

pub(super) fn check_id(id: &str) -> Result<(), CliError> {
    let ok = id.len() == crate::auth::tokens::ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(CliError::Invalid(format!(
            "{id:?} is not a token id (16 hex digits, as `hub token list` shows)"
        )))
    }
}

pub(super) fn print_list(list: &TokenList, json: bool) -> Result<(), CliError> {
    if json {
        return print_json(list);
    }
    print!("{}", table(&list.tokens));
    Ok(())
}

/// The token list as a table with a header line, columns padded to their widest cell.
pub fn table(tokens: &[TokenSummary]) -> String {
    let dash = || "-".to_owned();
    let mut rows = vec![
        [
            "ID",
            "NAME",
            "SCOPES",
            "DEVICES",
            "CREATED",
            "EXPIRES",
            "LAST USED",
            "REVOKED",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for t in tokens {
        rows.push(vec![
            t.id.clone(),
            t.name.clone(),
            t.scopes.join(","),
            if t.devices.is_empty() {
                "*".to_owned()
            } else {
                t.devices.join(",")
            },
            t.created.clone(),
            t.expires.clone().unwrap_or_else(dash),
            t.last_used.clone().unwrap_or_else(dash),
            if t.revoked { "yes" } else { "no" }.to_owned(),
        ]);
    }
    padded(&rows)
}
