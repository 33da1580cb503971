//! When a traced run ends, and what pmet does to the command on the way:
//! every rule about signals, `--duration`, the root's exit and the processes
//! it leaves behind, as a state machine with no I/O. It is told what happened
//! (a signal and who sent it, the root's exit, the time) and answers with
//! [`Action`]s; [`trace`](crate::trace) carries them out. Each rule is
//! unit-tested below.

use std::time::Duration;

use tokio::time::Instant;

use crate::{model::tree::ExitStatus, signals::Received};

/// How long a launched command gets to exit after SIGTERM (at `--duration`,
/// after a TERM or HUP sent to pmet), and processes after SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(5);

/// What happens, once the launched command exits, to the processes it left
/// running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Descendants {
    /// Return at once; they are reported as still running and left alone.
    #[default]
    Leave,
    /// Follow them until they end, at most this long (`--wait-descendants`).
    Wait(Option<Duration>),
    /// SIGTERM them, SIGKILL after this grace (`--kill-descendants`).
    Kill(Duration),
}

/// Whom a signal is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The launched command only.
    Root,
    /// Every process of the tree still running.
    Tree,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a signal.
    Signal(Target, i32),
    /// Stop following: settle, report.
    Finish,
}

/// The state of a run's ending.
#[derive(Debug)]
pub struct Lifecycle {
    launched: bool,
    descendants: Descendants,
    root_done: bool,
    /// Stopping signals received (INT, TERM, HUP, QUIT).
    signals: u32,
    stop_signal: i32,
    stopped_early: Option<&'static str>,
    /// `--duration`: when it runs out, and how far its escalation went.
    duration_at: Option<Instant>,
    term_sent: bool,
    kill_sent: bool,
    /// After a TERM or HUP: when to stop waiting for the command.
    stop_by: Option<Instant>,
    /// After the root's exit: when to stop following (or to SIGKILL) what it
    /// left running.
    after_root: Option<Instant>,
    killed_descendants: bool,
    /// `--preserve-status`: the command's status even after a timeout.
    preserve_status: bool,
}

impl Lifecycle {
    /// A run that launched its command (else attached), with these options.
    pub fn new(
        launched: bool,
        descendants: Descendants,
        duration: Option<Duration>,
        now: Instant,
    ) -> Self {
        Self {
            launched,
            descendants,
            root_done: !launched,
            signals: 0,
            stop_signal: libc::SIGINT,
            stopped_early: None,
            duration_at: duration.map(|d| now + d),
            term_sent: false,
            kill_sent: false,
            stop_by: None,
            after_root: None,
            killed_descendants: false,
            preserve_status: false,
        }
    }

    /// Whether a command the duration ran out on exits with its own status
    /// (else 124, as timeout(1)).
    pub fn preserve_status(mut self, on: bool) -> Self {
        self.preserve_status = on;
        self
    }

    /// Why tracing stopped before the tree ended, if it did.
    pub fn stopped_early(&self) -> Option<&'static str> {
        self.stopped_early
    }

    /// Whether the launched command is still running.
    pub fn root_running(&self) -> bool {
        self.launched && !self.root_done
    }

    /// The launched command has exited.
    pub fn root_exited(&mut self) {
        self.root_done = true;
    }

    /// The earliest moment [`Lifecycle::on_deadline`] must be called.
    pub fn next_deadline(&self) -> Option<Instant> {
        [self.duration_at, self.stop_by, self.after_root]
            .into_iter()
            .flatten()
            .min()
    }

    /// A signal pmet received; `sender_in_tree` says whether a process of the
    /// traced tree sent it.
    pub fn on_signal(&mut self, got: Received, sender_in_tree: bool, now: Instant) -> Vec<Action> {
        let mut act = Vec::new();
        if self.launched && got.pass_on(sender_in_tree) {
            // Sent to pmet alone, meant for the command: to every process of
            // its tree, as a terminal would to its group.
            act.push(Action::Signal(Target::Tree, got.signo));
        }
        if matches!(got.signo, libc::SIGUSR1 | libc::SIGUSR2) {
            return act;
        }
        self.signals += 1;
        self.stop_signal = got.signo;
        if !self.launched || self.signals >= 2 {
            // Attached (nothing to wait for), or a second signal: the report
            // now, whatever still runs.
            self.stopped_early = Some("interrupted");
            act.push(Action::Finish);
        } else if matches!(got.signo, libc::SIGTERM | libc::SIGHUP) {
            // Being stopped (docker stop, a CI cancel): the command gets a
            // grace to exit, then the report is written regardless.
            self.stop_by.get_or_insert(now + TERM_GRACE);
        }
        act
    }

    /// A deadline may have passed.
    pub fn on_deadline(&mut self, now: Instant) -> Vec<Action> {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.stop_by) {
            self.stopped_early = Some("interrupted");
            return vec![Action::Finish];
        }
        if due(self.duration_at) {
            self.stopped_early = Some("duration");
            if !self.root_running() || self.kill_sent {
                return vec![Action::Finish];
            }
            // As timeout(1) with --kill-after: SIGTERM, then SIGKILL for a
            // command that ignores it, then give up on it.
            let sig = if self.term_sent {
                self.kill_sent = true;
                libc::SIGKILL
            } else {
                self.term_sent = true;
                libc::SIGTERM
            };
            self.duration_at = Some(now + TERM_GRACE);
            return vec![Action::Signal(Target::Root, sig)];
        }
        if due(self.after_root) {
            return match self.descendants {
                Descendants::Kill(_) if !self.killed_descendants => {
                    self.killed_descendants = true;
                    self.after_root = Some(now + TERM_GRACE);
                    vec![Action::Signal(Target::Tree, libc::SIGKILL)]
                }
                // The limit of --wait-descendants, or processes that
                // outlived SIGKILL (uninterruptible): reported as running.
                _ => vec![Action::Finish],
            };
        }
        Vec::new()
    }

    /// After anything happened: what to do, now that `alive` processes of
    /// the tree still run.
    pub fn on_change(&mut self, alive: usize, now: Instant) -> Vec<Action> {
        if !self.root_done {
            return Vec::new();
        }
        if alive == 0 {
            return vec![Action::Finish];
        }
        if !self.launched || self.after_root.is_some() {
            return Vec::new();
        }
        match self.descendants {
            // Like time(1): the command's end is the end.
            Descendants::Leave => vec![Action::Finish],
            Descendants::Wait(limit) => {
                // No limit: a deadline that never comes.
                self.after_root =
                    Some(now + limit.unwrap_or(Duration::from_secs(86400 * 365 * 30)));
                Vec::new()
            }
            Descendants::Kill(grace) => {
                self.after_root = Some(now + grace);
                vec![Action::Signal(Target::Tree, libc::SIGTERM)]
            }
        }
    }

    /// pmet's exit status: the command's own, else why it did not have one.
    /// A command the duration ran out on (it was still running: pmet sent
    /// it SIGTERM) makes 124, as timeout(1), whatever it then exited with,
    /// unless asked to preserve its status.
    pub fn exit_code(&self, root: Option<ExitStatus>) -> i32 {
        match (self.launched, root, self.stopped_early) {
            (false, ..) => 0,
            (true, _, Some("duration")) if self.term_sent && !self.preserve_status => 124,
            (true, Some(st), _) => st.shell_code(),
            // Still running when pmet stopped waiting: as a shell reports a
            // signal, and as timeout(1) reports a timeout.
            (true, None, Some("interrupted")) => 128 + self.stop_signal,
            (true, None, _) => 124,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terminal(signo: i32) -> Received {
        Received {
            signo,
            from_terminal: true,
            sender: None,
        }
    }

    fn kill(signo: i32) -> Received {
        Received {
            signo,
            from_terminal: false,
            sender: Some(4242),
        }
    }

    fn launched(d: Descendants) -> (Lifecycle, Instant) {
        let t0 = Instant::now();
        (Lifecycle::new(true, d, None, t0), t0)
    }

    #[test]
    fn ctrl_c_reaches_the_command_from_the_terminal_and_a_second_one_stops() {
        let (mut lc, t0) = launched(Descendants::Leave);
        assert_eq!(lc.on_signal(terminal(libc::SIGINT), false, t0), []);
        assert_eq!(
            lc.on_signal(terminal(libc::SIGINT), false, t0),
            [Action::Finish]
        );
        assert_eq!(lc.stopped_early(), Some("interrupted"));
        assert_eq!(lc.exit_code(None), 130);
    }

    #[test]
    fn a_signal_sent_to_pmet_alone_is_passed_to_the_whole_tree() {
        let (mut lc, t0) = launched(Descendants::Leave);
        assert_eq!(
            lc.on_signal(kill(libc::SIGINT), false, t0),
            [Action::Signal(Target::Tree, libc::SIGINT)]
        );
        // Not back to the tree that sent it.
        assert_eq!(
            lc.on_signal(kill(libc::SIGQUIT), true, t0),
            [Action::Finish]
        );
    }

    #[test]
    fn term_starts_a_bounded_stop() {
        let (mut lc, t0) = launched(Descendants::Leave);
        assert_eq!(
            lc.on_signal(kill(libc::SIGTERM), false, t0),
            [Action::Signal(Target::Tree, libc::SIGTERM)]
        );
        assert_eq!(lc.next_deadline(), Some(t0 + TERM_GRACE));
        assert_eq!(lc.on_deadline(t0 + TERM_GRACE / 2), []);
        assert_eq!(lc.on_deadline(t0 + TERM_GRACE), [Action::Finish]);
        assert_eq!(lc.exit_code(None), 128 + libc::SIGTERM);
        // The command exiting within the grace ends the run with its status.
        let (mut lc, t0) = launched(Descendants::Leave);
        lc.on_signal(kill(libc::SIGHUP), false, t0);
        lc.root_exited();
        assert_eq!(lc.on_change(0, t0), [Action::Finish]);
        assert_eq!(
            lc.exit_code(Some(ExitStatus::from_raw(libc::SIGHUP as u32))),
            129
        );
    }

    #[test]
    fn usr1_and_usr2_are_passed_on_and_stop_nothing() {
        let (mut lc, t0) = launched(Descendants::Leave);
        for _ in 0..3 {
            assert_eq!(
                lc.on_signal(kill(libc::SIGUSR1), false, t0),
                [Action::Signal(Target::Tree, libc::SIGUSR1)]
            );
        }
        assert_eq!(lc.stopped_early(), None);
        assert_eq!(lc.next_deadline(), None);
    }

    #[test]
    fn attached_the_first_signal_stops_and_nothing_is_passed_on() {
        let t0 = Instant::now();
        let mut lc = Lifecycle::new(false, Descendants::Leave, None, t0);
        assert_eq!(lc.on_signal(kill(libc::SIGUSR1), false, t0), []);
        assert_eq!(
            lc.on_signal(kill(libc::SIGTERM), false, t0),
            [Action::Finish]
        );
        assert_eq!(lc.exit_code(None), 0);
    }

    #[test]
    fn duration_sends_term_then_kill_then_gives_up() {
        let t0 = Instant::now();
        let d = Duration::from_secs(2);
        let mut lc = Lifecycle::new(true, Descendants::Leave, Some(d), t0);
        assert_eq!(lc.next_deadline(), Some(t0 + d));
        assert_eq!(
            lc.on_deadline(t0 + d),
            [Action::Signal(Target::Root, libc::SIGTERM)]
        );
        let t1 = t0 + d + TERM_GRACE;
        assert_eq!(
            lc.on_deadline(t1),
            [Action::Signal(Target::Root, libc::SIGKILL)]
        );
        assert_eq!(lc.on_deadline(t1 + TERM_GRACE), [Action::Finish]);
        assert_eq!(lc.stopped_early(), Some("duration"));
        assert_eq!(lc.exit_code(None), 124);
        // Killed by it: 124 as timeout(1) says, or the command's own status
        // where asked.
        assert_eq!(lc.exit_code(Some(ExitStatus::from_raw(9))), 124);
        assert_eq!(lc.exit_code(Some(ExitStatus::Code(0))), 124);
        let lc = lc.preserve_status(true);
        assert_eq!(lc.exit_code(Some(ExitStatus::from_raw(9))), 137);
        assert_eq!(lc.exit_code(None), 124, "no status of its own to preserve");
    }

    #[test]
    fn a_command_that_ends_before_the_duration_keeps_its_status() {
        let t0 = Instant::now();
        let d = Duration::from_secs(2);
        let mut lc = Lifecycle::new(true, Descendants::Leave, Some(d), t0);
        lc.root_exited();
        assert_eq!(lc.on_change(1, t0), [Action::Finish]);
        assert_eq!(lc.exit_code(Some(ExitStatus::Code(3))), 3);
    }

    #[test]
    fn the_roots_exit_ends_the_run_and_leaves_the_rest_running() {
        let (mut lc, t0) = launched(Descendants::Leave);
        assert_eq!(lc.on_change(3, t0), [], "the root still runs");
        lc.root_exited();
        assert_eq!(lc.on_change(2, t0), [Action::Finish]);
        assert_eq!(lc.stopped_early(), None);
        assert_eq!(lc.exit_code(Some(ExitStatus::Code(3))), 3);
    }

    #[test]
    fn wait_descendants_follows_them_up_to_its_limit() {
        let limit = Duration::from_secs(1);
        let (mut lc, t0) = launched(Descendants::Wait(Some(limit)));
        lc.root_exited();
        assert_eq!(lc.on_change(2, t0), []);
        assert_eq!(lc.on_change(1, t0), [], "still waiting");
        assert_eq!(lc.on_deadline(t0 + limit), [Action::Finish]);
        let (mut lc, t0) = launched(Descendants::Wait(None));
        lc.root_exited();
        assert_eq!(lc.on_change(1, t0), []);
        assert_eq!(lc.on_deadline(t0 + Duration::from_secs(86400)), []);
        assert_eq!(lc.on_change(0, t0), [Action::Finish]);
    }

    #[test]
    fn kill_descendants_terms_then_kills_them() {
        let grace = Duration::from_millis(300);
        let (mut lc, t0) = launched(Descendants::Kill(grace));
        lc.root_exited();
        assert_eq!(
            lc.on_change(2, t0),
            [Action::Signal(Target::Tree, libc::SIGTERM)]
        );
        assert_eq!(lc.on_change(2, t0), [], "once");
        assert_eq!(
            lc.on_deadline(t0 + grace),
            [Action::Signal(Target::Tree, libc::SIGKILL)]
        );
        assert_eq!(lc.on_change(0, t0 + grace), [Action::Finish]);
        // An uninterruptible survivor does not hold the run forever.
        let (mut lc, t0) = launched(Descendants::Kill(grace));
        lc.root_exited();
        lc.on_change(1, t0);
        lc.on_deadline(t0 + grace);
        assert_eq!(lc.on_deadline(t0 + grace + TERM_GRACE), [Action::Finish]);
    }
}
