//! What the CLI remembers between runs: session tokens from `gestor login`
//! and the newest initial-gestors list (seed §1: a client starts from it
//! next time). Kept under `$GESTOR_HOME`, default `~/.gestor`.

use anyhow::{Context, Result};
use std::path::PathBuf;

pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("GESTOR_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".gestor")
}

fn session_path(user: &str) -> PathBuf {
    home().join("sessions").join(format!("{user}.json"))
}

pub fn save_session(session: &crate::directory::Session) -> Result<()> {
    let path = session_path(&session.username);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(session)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub fn load_session(user: &str) -> Result<crate::directory::Session> {
    let path = session_path(user);
    let bytes = std::fs::read(&path).with_context(|| {
        format!("no saved session for {user} (run `gestor login {user}` first, or pass --token)")
    })?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("session file {} is unreadable", path.display()))
}

pub fn forget_session(user: &str) {
    let _ = std::fs::remove_file(session_path(user));
}

pub fn load_initial_gestors() -> Vec<String> {
    std::fs::read(home().join("initial_gestors.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn save_initial_gestors(list: &[String]) {
    if list.is_empty() {
        return;
    }
    let dir = home();
    if std::fs::create_dir_all(&dir).is_ok() {
        if let Ok(bytes) = serde_json::to_vec_pretty(list) {
            let _ = std::fs::write(dir.join("initial_gestors.json"), bytes);
        }
    }
}
