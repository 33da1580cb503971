//! The signals pmet passes on to the command it traces, taken through a
//! `signalfd`, which, unlike a handler, says who sent each: a signal the
//! terminal sent (Ctrl+C) already reached the command's whole process group
//! and must not be delivered twice; one the traced command sent pmet itself
//! is not sent back (as sudo does); one sent to pmet by anybody else
//! (`kill`, `docker stop`, a CI runner's cancel) is meant for the command and
//! is passed on. (Nothing tells `kill PID` from `kill 0` apart, so a group
//! signal from a process outside the terminal reaches the command twice.)

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::unix::AsyncFd;

/// The signals pmet passes on.
pub const FORWARDED: [i32; 6] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

fn set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// Blocks [`FORWARDED`] in the calling thread, so that they are only ever
/// taken from the signalfd. Call it before any other thread is started:
/// threads inherit the mask. The launched command gets an empty mask back.
pub fn block() {
    let set = set();
    // SAFETY: valid set; the old mask is not needed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// One signal received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    /// The signal.
    pub signo: i32,
    /// The terminal sent it (Ctrl+C, Ctrl+\\, a hangup): its whole
    /// foreground group, the command included, has it already.
    pub from_terminal: bool,
    /// The process that sent it, when a process did.
    pub sender: Option<u32>,
}

impl Received {
    /// Whether to pass it on to the command's tree, given whether the sender
    /// is a process of that tree.
    pub fn pass_on(&self, sender_in_tree: bool) -> bool {
        !self.from_terminal && !sender_in_tree
    }
}

/// The signalfd, registered with the reactor.
pub struct SignalFd(AsyncFd<OwnedFd>);

impl SignalFd {
    /// Opens a signalfd for [`FORWARDED`] (blocked beforehand by [`block`]).
    pub fn open() -> io::Result<Self> {
        let set = set();
        // SAFETY: valid set; a new fd is returned.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned here.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: the fd is owned by the AsyncFd and closed only with it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Self(fd))
    }

    /// The next signal.
    pub async fn recv(&self) -> io::Result<Received> {
        loop {
            let mut guard = self.0.readable().await?;
            // SAFETY: zeroed siginfo is a valid buffer of its size.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reading at most `size` bytes into `info`.
            let n =
                unsafe { libc::read(self.0.get_ref().as_raw_fd(), (&raw mut info).cast(), size) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return Err(e);
            }
            if n as usize != size {
                continue;
            }
            return Ok(Received {
                signo: info.ssi_signo as i32,
                from_terminal: info.ssi_code == libc::SI_KERNEL,
                sender: (info.ssi_code == libc::SI_USER || info.ssi_code == libc::SI_QUEUE)
                    .then_some(info.ssi_pid)
                    .filter(|&p| p != 0),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_sent_it_decides_whether_it_is_passed_on() {
        let got = |from_terminal, sender| Received {
            signo: libc::SIGINT,
            from_terminal,
            sender,
        };
        // Ctrl+C on the terminal: the command has it already.
        assert!(!got(true, None).pass_on(false));
        // `kill PMET_PID`, docker stop, a CI runner: meant for the command.
        assert!(got(false, Some(42)).pass_on(false));
        // The command signalling pmet: not sent back.
        assert!(!got(false, Some(42)).pass_on(true));
    }
}
