//! The one session store: what a client remembers between runs, under
//! `$GESTOR_HOME` (default `~/.gestor`) — session tokens from a login
//! (`sessions/USER.json`) and the newest initial-gestors list
//! (`initial_gestors.json`; seed §1: a client starts from it next time).
//! `gestor login`, `gestor chat` and the chat library all go through it, and
//! every file is replaced atomically, so a crash or a second client of the
//! same user never leaves a torn file.

use crate::directory::Session;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// `$GESTOR_HOME`, else `~/.gestor` (else `./.gestor`).
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("GESTOR_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".gestor")
}

/// A client state file that cannot be read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    pub reason: String,
}

impl FileError {
    pub fn new(path: &Path, reason: impl std::fmt::Display) -> Self {
        FileError {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

/// Replace `path` with `value` as JSON: a crash leaves the old or the new
/// file. The temporary name is unique, so concurrent writers never share it.
pub fn write_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), FileError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| FileError::new(path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| FileError::new(dir, e))?;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_data()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(FileError::new(path, e));
    }
    Ok(())
}

/// The JSON value in `path`; `None` when there is no such file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, FileError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| FileError::new(path, format!("unreadable: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(FileError::new(path, e)),
    }
}

/// Sessions and the initial-gestors list under one home directory.
#[derive(Debug, Clone)]
pub struct SessionStore {
    home: PathBuf,
}

impl SessionStore {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        SessionStore { home: home.into() }
    }

    /// The store under [`home()`].
    pub fn default_home() -> Self {
        SessionStore::new(home())
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    fn session_path(&self, user: &str) -> PathBuf {
        self.home.join("sessions").join(format!("{user}.json"))
    }

    fn initial_gestors_path(&self) -> PathBuf {
        self.home.join("initial_gestors.json")
    }

    /// The saved session of `user`, if any.
    pub fn load(&self, user: &str) -> Result<Option<Session>, FileError> {
        read_json(&self.session_path(user))
    }

    pub fn save(&self, session: &Session) -> Result<(), FileError> {
        write_atomic(&self.session_path(&session.username), session)
    }

    /// Drop the saved session of `user` (logged out); no session is fine.
    pub fn forget(&self, user: &str) -> Result<(), FileError> {
        let path = self.session_path(user);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FileError::new(&path, e)),
            _ => Ok(()),
        }
    }

    /// The saved initial-gestors list; empty when none was saved or it is
    /// unreadable (it is only a hint of where to start).
    pub fn initial_gestors(&self) -> Vec<String> {
        read_json(&self.initial_gestors_path())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Remember the newest initial-gestors list (an empty one is not saved).
    pub fn save_initial_gestors(&self, list: &[String]) -> Result<(), FileError> {
        if list.is_empty() {
            return Ok(());
        }
        write_atomic(&self.initial_gestors_path(), list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(user: &str, token: &str) -> Session {
        Session {
            username: user.into(),
            token: token.into(),
            gestor: "tcp://127.0.0.1:1".into(),
            signal: "tcp://127.0.0.1:2".into(),
            alive_every_ms: 1000,
            presence_timeout_ms: 3000,
            hops: 0,
        }
    }

    #[test]
    fn sessions_round_trip_and_replace_atomically() {
        let dir = std::env::temp_dir().join(format!("gestor-sessions-{}", rand::random::<u64>()));
        let store = SessionStore::new(&dir);
        assert!(store.load("al").unwrap().is_none());
        store.save(&session("al", "t1")).unwrap();
        store.save(&session("al", "t2")).unwrap();
        assert_eq!(store.load("al").unwrap().unwrap().token, "t2");
        // Nothing but the session itself is left in the folder.
        let names: Vec<_> = std::fs::read_dir(dir.join("sessions"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("al.json")]);
        store.forget("al").unwrap();
        store.forget("al").unwrap();
        assert!(store.load("al").unwrap().is_none());
        assert!(store.initial_gestors().is_empty());
        store.save_initial_gestors(&[]).unwrap();
        store
            .save_initial_gestors(&["tcp://127.0.0.1:1".to_string()])
            .unwrap();
        assert_eq!(store.initial_gestors(), vec!["tcp://127.0.0.1:1"]);
        std::fs::remove_dir_all(&dir).ok();
    }
}
