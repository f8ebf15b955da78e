//! Standard output of the CLI commands.
//!
//! A closed standard output (`gestor status | head -1`, `gestor demo | head
//! -3`) is not a failure worth a message, and it must not panic (`println!`
//! does) nor kill the process with SIGPIPE in the middle of its clean-up (a
//! demo's gestores left running, a chat not logged out). Every write here
//! returns [`StdoutError::Closed`] instead; commands pass it up with `?`, so
//! they stop at once and their clean-up runs, and `main` then exits 0
//! without a word ([`is_closed_stdout`]), as Unix tools do.
//!
//! Use [`outln!`](crate::outln) like `println!` and [`out!`](crate::out) like
//! `print!` (it flushes, for progress dots).

use std::fmt;
use std::io::Write;

/// Why a line could not be written to standard output.
#[derive(Debug, thiserror::Error)]
pub enum StdoutError {
    /// The reader went away (a closed pipe).
    #[error("standard output closed")]
    Closed,
    /// Any other write error (a full disk behind a redirection, …).
    #[error("cannot write to standard output: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for StdoutError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            StdoutError::Closed
        } else {
            StdoutError::Io(e)
        }
    }
}

/// Write `args` (and a newline when `newline`) to standard output, flushed.
pub fn write(args: fmt::Arguments<'_>, newline: bool) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    if newline {
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// True when standard output is a pipe whose reader has gone away, found
/// without writing (a command that writes rarely, like a quiet chat, would
/// otherwise notice only at its next line).
pub fn closed() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one pollfd we own, no waiting; POLLERR/POLLHUP are reported
    // on a pipe's write end once its read end is closed.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n == 1 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

/// True when `e` (or anything in its chain) is a closed standard output:
/// the command ended because nobody reads its output any more.
pub fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(c.downcast_ref::<StdoutError>(), Some(StdoutError::Closed))
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` that returns `Result<(), StdoutError>` instead of panicking.
#[macro_export]
macro_rules! outln {
    () => { $crate::out::write(format_args!(""), true) };
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), true) };
}

/// `print!` (flushed) that returns `Result<(), StdoutError>` instead of panicking.
#[macro_export]
macro_rules! out {
    ($($t:tt)*) => { $crate::out::write(format_args!($($t)*), false) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_pipe_is_closed_stdout_through_context() {
        let e: StdoutError = std::io::Error::from(std::io::ErrorKind::BrokenPipe).into();
        assert!(matches!(e, StdoutError::Closed));
        let any = anyhow::Error::from(e).context("printing the status");
        assert!(is_closed_stdout(&any));
        let other: StdoutError = std::io::Error::other("disk full").into();
        assert!(!is_closed_stdout(&anyhow::Error::from(other)));
    }

    #[test]
    fn a_pipe_without_reader_is_seen_closed_without_writing() {
        let mut fds = [0; 2];
        // SAFETY: a fresh pipe; both ends closed below.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let probe = |fd: i32| {
            let mut p = libc::pollfd {
                fd,
                events: 0,
                revents: 0,
            };
            unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLERR != 0 }
        };
        assert!(!probe(fds[1]), "a reader is there");
        unsafe { libc::close(fds[0]) };
        assert!(probe(fds[1]), "the reader has gone");
        unsafe { libc::close(fds[1]) };
    }
}
