//! `dir.*`: the directory on the gestor responsible for a user (served by
//! `gestor_directory`). The bodies are the [`crate::user`] ones.

use crate::user::{Auth, Authenticated, Credentials, Done, Found, LoggedIn, Registered, UserOnly};

kinds! {
    /// `dir.register` — **internal**: `user.register` forwarded by the
    /// gestor a client asked to the responsible one.
    Register = "dir.register", Internal, Credentials => Registered;
    /// `dir.login` — **internal**: forwarded `user.login`.
    Login = "dir.login", Internal, Credentials => LoggedIn;
    /// `dir.lookup` — **internal**: forwarded `user.lookup`; also called
    /// locally by the mailbox plugin on the owner (presence, mailbox checks).
    Lookup = "dir.lookup", Internal, UserOnly => Found;
    /// `dir.set_address` — **internal**: forwarded `user.set_address`.
    SetAddress = "dir.set_address", Internal, Authenticated => Done;
    /// `dir.logout` — **internal**: forwarded `user.logout`.
    Logout = "dir.logout", Internal, Authenticated => Done;
    /// `dir.delete` — **internal**: forwarded `user.delete`.
    Delete = "dir.delete", Internal, Credentials => Done;
    /// `dir.authenticate` — **local**: is `token` the user's current
    /// session? Asked only by other plugins on the owner (the mailbox) with
    /// `call_local`; never forwards. From the network it would be a
    /// token-guessing oracle.
    Authenticate = "dir.authenticate", Local, Auth => bool;
}
