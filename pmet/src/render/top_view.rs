//! `pmet top` on a terminal: a full-screen table of the host's processes,
//! redrawn at every sample and at every key (ratatui, crossterm). Keys:
//! `c` `m` `d` `n` sort by CPU, memory, disk or network; `t` toggles the
//! tree; `/` filters by command text, `user:NAME` or `container:ID` (Enter
//! keeps it, Esc clears it); `q`, Esc or Ctrl-C quits. The terminal is restored on
//! every way out: quitting, the end of `-d`, an error, a panic.

use std::io::{self, Stdout};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor,
        event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Paragraph, Row, Table},
};

use super::{
    top::TopSort,
    units::{bytes, command_line, printable},
};
use crate::model::snapshot::{ProcLine, Snapshot};

/// A key pressed.
pub type Key = KeyEvent;

/// Bytes in at most 5 characters (`0`, `980`, `12K`, `1.2M`, `34G`): the
/// table must fit 80 columns with room for the command.
fn short(n: f64) -> String {
    let units = ["", "K", "M", "G", "T"];
    let mut v = n.max(0.0);
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}")
    } else if v < 10.0 {
        format!("{v:.1}{}", units[i])
    } else {
        format!("{v:.0}{}", units[i])
    }
}

/// The command as a person reads it: the program's base name, then its
/// arguments.
fn command(p: &ProcLine) -> String {
    match p.argv.split_first() {
        Some((prog, rest)) => {
            let base = prog.rsplit('/').next().unwrap_or(prog);
            let mut v = vec![base.to_owned()];
            v.extend(rest.iter().cloned());
            command_line(&v)
        }
        None => printable(&p.comm).into_owned(),
    }
}

/// Whether `p` passes the filter: `user:NAME` (its user, exactly),
/// `container:ID` (its container id, or a prefix of it), or text found in
/// its command line or name (any case).
pub fn matches(filter: &str, p: &ProcLine) -> bool {
    let filter = filter.trim();
    if let Some(user) = filter.strip_prefix("user:") {
        return p.user.as_deref() == Some(user.trim());
    }
    if let Some(id) = filter.strip_prefix("container:") {
        let id = id.trim();
        return !id.is_empty() && p.container.as_deref().is_some_and(|c| c.starts_with(id));
    }
    let needle = filter.to_lowercase();
    needle.is_empty()
        || command_line(&p.argv).to_lowercase().contains(&needle)
        || p.comm.to_lowercase().contains(&needle)
}

/// Puts the terminal back as it was (also from the panic hook).
fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// The full-screen view.
pub struct TopView {
    terminal: Terminal<CrosstermBackend<Stdout>>,
    sort: TopSort,
    filter: String,
    editing: bool,
    tree: bool,
    last: Option<Snapshot>,
    keys: tokio::sync::mpsc::UnboundedReceiver<KeyEvent>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl TopView {
    /// Takes over the terminal (alternate screen, raw mode) and starts
    /// reading keys.
    pub fn start(sort: TopSort) -> io::Result<Self> {
        terminal::enable_raw_mode()?;
        if let Err(e) = execute!(io::stdout(), EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(e);
        }
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        let terminal = match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e);
            }
        };
        let (tx, keys) = tokio::sync::mpsc::unbounded_channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                if event::poll(std::time::Duration::from_millis(100)).unwrap_or(false)
                    && let Ok(Event::Key(k)) = event::read()
                    && tx.send(k).is_err()
                {
                    break;
                }
            }
        });
        Ok(Self {
            terminal,
            sort,
            filter: String::new(),
            editing: false,
            tree: false,
            last: None,
            keys,
            stop,
        })
    }

    /// The next key pressed.
    pub async fn next_key(&mut self) -> Option<KeyEvent> {
        self.keys.recv().await
    }

    /// Takes a key; `true` when it asks to quit.
    pub fn key(&mut self, k: KeyEvent) -> bool {
        if k.kind == KeyEventKind::Release {
            return false;
        }
        let ctrl_c = k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c');
        if ctrl_c {
            return true;
        }
        if self.editing {
            match k.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
        } else {
            match k.code {
                KeyCode::Char('q') | KeyCode::Esc => return true,
                KeyCode::Char('c') => self.sort = TopSort::Cpu,
                KeyCode::Char('m') => self.sort = TopSort::Mem,
                KeyCode::Char('d') => self.sort = TopSort::Disk,
                KeyCode::Char('n') => self.sort = TopSort::Net,
                KeyCode::Char('t') => self.tree = !self.tree,
                KeyCode::Char('/') => self.editing = true,
                _ => {}
            }
        }
        let _ = self.redraw();
        false
    }

    /// Shows a new sample.
    pub fn draw(&mut self, s: &Snapshot) -> io::Result<()> {
        self.last = Some(s.clone());
        self.redraw()
    }

    /// Follows a terminal resize.
    pub fn resize(&mut self) -> io::Result<()> {
        self.terminal.autoresize()?;
        self.redraw()
    }

    fn rows(&self, s: &Snapshot) -> Vec<(usize, ProcLine)> {
        let mut all: Vec<&ProcLine> = s
            .processes
            .iter()
            .chain(&s.ended)
            .filter(|p| matches(&self.filter, p))
            .collect();
        let key = |p: &ProcLine| match self.sort {
            TopSort::Cpu => p.cpu_pct,
            TopSort::Mem => p.rss_bytes.unwrap_or(0) as f64,
            TopSort::Disk => p.disk_read_rate + p.disk_write_rate,
            TopSort::Net => p.net_rate.tx() + p.net_rate.rx(),
        };
        all.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.pid.cmp(&b.pid)));
        if !self.tree {
            return all.into_iter().map(|p| (0, p.clone())).collect();
        }
        // The tree: each process under its parent when its parent is shown,
        // siblings in rank order.
        let shown: std::collections::HashSet<u32> = all.iter().map(|p| p.pid).collect();
        let mut out = Vec::new();
        fn walk(
            pid: Option<u32>,
            depth: usize,
            all: &[&ProcLine],
            shown: &std::collections::HashSet<u32>,
            out: &mut Vec<(usize, ProcLine)>,
        ) {
            for p in all {
                let parent = p.ppid.filter(|pp| shown.contains(pp));
                if parent == pid && out.len() < 10_000 && !out.iter().any(|(_, o)| o.pid == p.pid) {
                    out.push((depth, (*p).clone()));
                    walk(Some(p.pid), depth + 1, all, shown, out);
                }
            }
        }
        walk(None, 0, &all, &shown, &mut out);
        out
    }

    fn redraw(&mut self) -> io::Result<()> {
        let Some(s) = self.last.clone() else {
            return Ok(());
        };
        let rows = self.rows(&s);
        let sort = self.sort;
        let filter = self.filter.clone();
        let editing = self.editing;
        let tree = self.tree;
        self.terminal.draw(|f| {
            let [head, body, foot] = Layout::vertical([
                Constraint::Length(2),
                Constraint::Min(1),
                Constraint::Length(1),
            ])
            .areas(f.area());
            let net = s
                .net
                .map(|_| {
                    format!(
                        " · net ↑{}/s ↓{}/s",
                        bytes(s.net_rate.tx() as u64),
                        bytes(s.net_rate.rx() as u64)
                    )
                })
                .unwrap_or_default();
            let summary = format!(
                "pmet top · {} processes · cpu {:.0}% · mem {} · disk r {}/s w {}/s{net}{}",
                s.alive,
                s.cpu_pct,
                bytes(s.rss_bytes),
                bytes(s.disk_read_rate as u64),
                bytes(s.disk_write_rate as u64),
                if s.lost > 0 {
                    format!(" · LOST {}", s.lost)
                } else {
                    String::new()
                }
            );
            let sorted = format!(
                "sorted by {}{}{}",
                sort.as_str(),
                if tree { " · tree" } else { "" },
                if filter.is_empty() {
                    String::new()
                } else {
                    format!(" · filter: {filter}")
                }
            );
            f.render_widget(
                Paragraph::new(vec![Line::from(summary), Line::from(sorted)]),
                head,
            );
            let table_rows = rows.iter().map(|(depth, p)| {
                let net = if p.net.is_some() {
                    format!("{}/{}", short(p.net_rate.tx()), short(p.net_rate.rx()))
                } else {
                    "-".into()
                };
                let row = Row::new(vec![
                    p.pid.to_string(),
                    p.user.clone().unwrap_or_else(|| "-".into()),
                    format!("{:.1}", p.cpu_pct),
                    p.rss_bytes
                        .map(|b| short(b as f64))
                        .unwrap_or_else(|| "-".into()),
                    format!("{}/{}", short(p.disk_read_rate), short(p.disk_write_rate)),
                    net,
                    format!(
                        "{}{}{}",
                        "  ".repeat((*depth).min(10)),
                        command(p),
                        if p.ended { " (ended)" } else { "" }
                    ),
                ]);
                if p.ended {
                    row.style(Style::default().add_modifier(Modifier::DIM))
                } else {
                    row
                }
            });
            let table = Table::new(
                table_rows,
                [
                    Constraint::Length(7),
                    Constraint::Length(8),
                    Constraint::Length(5),
                    Constraint::Length(5),
                    Constraint::Length(11),
                    Constraint::Length(11),
                    Constraint::Min(10),
                ],
            )
            .header(
                Row::new(vec![
                    "PID",
                    "USER",
                    "CPU%",
                    "MEM",
                    "DISK r/w",
                    "NET tx/rx",
                    "COMMAND",
                ])
                .style(Style::default().add_modifier(Modifier::BOLD)),
            );
            f.render_widget(table, body);
            let help = if editing {
                format!("filter: {filter}_   (text, user:NAME or container:ID; Enter keeps it, Esc clears it)")
            } else {
                "c m d n: sort · t: tree · /: filter · q: quit".to_owned()
            };
            f.render_widget(Paragraph::new(help), foot);
        })?;
        Ok(())
    }
}

impl Drop for TopView {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        restore();
    }
}
