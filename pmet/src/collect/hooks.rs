//! The kernel side's one program table: every program, the hook it attaches
//! to, what it gives pmet, and what it needs from the kernel; and the choice,
//! per capability, of the first alternative this kernel can run.
//!
//! A kernel without one hook loses one capability, not all: where the socket
//! tracepoints are missing (before 6.3) the network comes from fexit hooks,
//! and where nothing can count it, it is unknown with the reason, while the
//! process hooks stay exact.

use serde::{Deserialize, Serialize};

/// What a group of programs gives pmet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// Every process's fork, exec and exit, with its exit status and final
    /// CPU (without it, pmet polls /proc).
    Process,
    /// A thread's final CPU, disk and memory figures at its last context
    /// switch (without it, taskstats gives them).
    ExitTotals,
    /// Bytes sent and received per process, TCP and UDP.
    Network,
    /// Each socket's ends, bytes and TCP life.
    Connections,
}

impl Capability {
    /// Every capability, in the order they are chosen (and reported).
    pub const ALL: [Capability; 4] = [
        Capability::Process,
        Capability::ExitTotals,
        Capability::Network,
        Capability::Connections,
    ];

    /// The name the report and `pmet check` use.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Process => "process",
            Capability::ExitTotals => "exit_totals",
            Capability::Network => "network",
            Capability::Connections => "connections",
        }
    }

    /// What is lost without it.
    pub fn without(self) -> &'static str {
        match self {
            Capability::Process => {
                "pmet polls /proc: short processes, exit statuses and network are unknown"
            }
            Capability::ExitTotals => "final CPU, disk and memory figures come from taskstats",
            Capability::Network => "network bytes are unknown (null in the report)",
            Capability::Connections => "per-connection figures are not kept",
        }
    }
}

/// The kind of hook a program attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// A classic tracepoint, through tracefs.
    Tracepoint {
        /// e.g. `sched`.
        category: &'static str,
        /// e.g. `sched_process_exit`.
        name: &'static str,
    },
    /// A BTF tracepoint (`tp_btf`).
    BtfTracepoint(&'static str),
    /// An fexit program on a kernel function.
    FExit(&'static str),
}

impl Attach {
    /// The hook as a person reads it, e.g. `tracepoint sched:sched_process_exit`.
    pub fn describe(&self) -> String {
        match self {
            Attach::Tracepoint { category, name } => format!("tracepoint {category}:{name}"),
            Attach::BtfTracepoint(name) => format!("BTF tracepoint {name}"),
            Attach::FExit(function) => format!("fexit {function}"),
        }
    }
}

/// One program of the object and where it attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Program {
    /// Its name in the object.
    pub name: &'static str,
    /// Its hook.
    pub attach: Attach,
}

/// The kind of hooks an alternative uses (`via` in the report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// BTF tracepoints.
    TpBtf,
    /// Classic tracepoints.
    Tracepoint,
    /// fexit on kernel functions.
    Fexit,
    /// BTF tracepoints, sockets named by address (no socket cookie).
    TpBtfAddress,
}

impl Via {
    /// The name the report and `pmet check` use.
    pub fn name(self) -> &'static str {
        match self {
            Via::TpBtf => "tp_btf",
            Via::Tracepoint => "tracepoint",
            Via::Fexit => "fexit",
            Via::TpBtfAddress => "tp_btf_address",
        }
    }
}

/// One way of giving a capability: a set of programs loaded together.
#[derive(Clone, Copy, Debug)]
pub struct Alternative {
    /// What it gives.
    pub capability: Capability,
    /// Its kind of hooks.
    pub via: Via,
    /// What it needs of the kernel, as a person would check it.
    pub needs: &'static str,
    /// Its programs. With `Via::Fexit` the loader attaches those whose
    /// functions the kernel has with the expected parameters (see
    /// [`Facts::fexit_functions`]).
    pub programs: &'static [Program],
}

const fn tp(name: &'static str, category: &'static str, tracepoint: &'static str) -> Program {
    Program {
        name,
        attach: Attach::Tracepoint {
            category,
            name: tracepoint,
        },
    }
}

const fn btf(name: &'static str, tracepoint: &'static str) -> Program {
    Program {
        name,
        attach: Attach::BtfTracepoint(tracepoint),
    }
}

const fn fexit(name: &'static str, function: &'static str) -> Program {
    Program {
        name,
        attach: Attach::FExit(function),
    }
}

/// The connection hooks (two alternatives: sockets named by cookie, or by
/// address where the cookie helper is refused).
const CONN_PROGRAMS: &[Program] = &[
    btf("inet_sock_set_state", "inet_sock_set_state"),
    btf("tcp_retransmit_skb", "tcp_retransmit_skb"),
    btf("tcp_destroy_sock", "tcp_destroy_sock"),
];

/// Every alternative, each capability's in the order they are preferred.
pub const TABLE: [Alternative; 8] = [
    Alternative {
        capability: Capability::Process,
        via: Via::TpBtf,
        needs: "BTF tracepoints task_newtask, sched_process_exec and sched_process_exit \
                with group_dead (Linux 6.16+), and BTF for task_struct and mm_struct",
        programs: &[
            btf("task_newtask_btf", "task_newtask"),
            btf("sched_process_exec_btf", "sched_process_exec"),
            btf("sched_process_exit_btf", "sched_process_exit"),
        ],
    },
    Alternative {
        capability: Capability::Process,
        via: Via::Tracepoint,
        needs: "tracefs and the tracepoints task:task_newtask, sched:sched_process_exec, \
                sched:sched_process_exit, syscalls:sys_enter_execve and \
                syscalls:sys_enter_execveat (CONFIG_FTRACE_SYSCALLS)",
        programs: &[
            tp("task_newtask", "task", "task_newtask"),
            tp("sys_enter_execve", "syscalls", "sys_enter_execve"),
            tp("sys_enter_execveat", "syscalls", "sys_enter_execveat"),
            tp("sched_process_exec", "sched", "sched_process_exec"),
            tp("sched_process_exit", "sched", "sched_process_exit"),
        ],
    },
    Alternative {
        capability: Capability::ExitTotals,
        via: Via::TpBtf,
        needs: "the BTF tracepoint sched_switch and BTF for task_struct",
        programs: &[btf("sched_switch", "sched_switch")],
    },
    Alternative {
        capability: Capability::Network,
        via: Via::TpBtf,
        needs: "BTF tracepoints sock_send_length and sock_recv_length (Linux 6.3+) \
                and BTF for struct sock",
        programs: &[
            btf("sock_send_btf", "sock_send_length"),
            btf("sock_recv_btf", "sock_recv_length"),
        ],
    },
    Alternative {
        capability: Capability::Network,
        via: Via::Tracepoint,
        needs: "tracefs and the tracepoints sock:sock_send_length and sock:sock_recv_length \
                (Linux 6.3+)",
        programs: &[
            tp("sock_send_length", "sock", "sock_send_length"),
            tp("sock_recv_length", "sock", "sock_recv_length"),
        ],
    },
    Alternative {
        capability: Capability::Network,
        via: Via::Fexit,
        needs: "fexit (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS) on inet_sendmsg, \
                inet6_sendmsg, inet_recvmsg, inet6_recvmsg (and inet_sendpage before 6.5), \
                and BTF for struct socket and struct sock",
        programs: &[
            fexit("inet_sendmsg_fx", "inet_sendmsg"),
            fexit("inet6_sendmsg_fx", "inet6_sendmsg"),
            fexit("inet_recvmsg_fx", "inet_recvmsg"),
            fexit("inet6_recvmsg_fx", "inet6_recvmsg"),
            fexit("inet_sendpage_fx", "inet_sendpage"),
        ],
    },
    Alternative {
        capability: Capability::Connections,
        via: Via::TpBtf,
        needs: "BTF tracepoints inet_sock_set_state, tcp_retransmit_skb and tcp_destroy_sock, \
                bpf_get_socket_cookie in tracing programs (Linux 5.12+), the socket's own \
                struct sock at each send and receive (not the classic tracepoints), \
                and BTF for struct sock_common",
        programs: CONN_PROGRAMS,
    },
    Alternative {
        capability: Capability::Connections,
        via: Via::TpBtfAddress,
        needs: "the same BTF tracepoints and BTF; sockets are named by their address \
                (for kernels whose tracing programs cannot call bpf_get_socket_cookie)",
        programs: CONN_PROGRAMS,
    },
];

/// The fexit functions without which the fexit network hooks would miss
/// bytes (`inet_sendpage` is needed only where the kernel has it).
const FEXIT_REQUIRED: [&str; 4] = [
    "inet_sendmsg",
    "inet6_sendmsg",
    "inet_recvmsg",
    "inet6_recvmsg",
];

/// What this kernel offers, found before anything is loaded: each entry is
/// `Err(reason)` when the kernel lacks it.
#[derive(Clone, Debug)]
pub struct Facts {
    /// The BTF process hooks' shapes and offsets.
    pub process_btf: Result<(), String>,
    /// The classic process tracepoints' fields.
    pub process_tracepoint: Result<(), String>,
    /// BTF for `task_struct`.
    pub task_btf: Result<(), String>,
    /// The BTF socket tracepoints and `struct sock`'s offsets.
    pub network_btf: Result<(), String>,
    /// The classic socket tracepoints' fields.
    pub network_tracepoint: Result<(), String>,
    /// The fexit targets this kernel has with the expected parameters.
    pub fexit_functions: Result<Vec<&'static str>, String>,
    /// `struct sock`'s ends.
    pub connections_btf: Result<(), String>,
}

impl Facts {
    fn static_need(&self, alt: &Alternative) -> Result<(), String> {
        match (alt.capability, alt.via) {
            (Capability::Process, Via::TpBtf) => self.process_btf.clone(),
            (Capability::Process, _) => self.process_tracepoint.clone(),
            (Capability::ExitTotals, _) => self.task_btf.clone(),
            (Capability::Network, Via::TpBtf | Via::TpBtfAddress) => self.network_btf.clone(),
            (Capability::Network, Via::Tracepoint) => self.network_tracepoint.clone(),
            (Capability::Network, Via::Fexit) => {
                let have = self.fexit_functions.clone()?;
                match FEXIT_REQUIRED.iter().find(|f| !have.contains(f)) {
                    Some(f) => Err(format!("{f} cannot be traced with the expected parameters")),
                    None => Ok(()),
                }
            }
            (Capability::Connections, _) => self.connections_btf.clone(),
        }
    }

    /// Whether program `p` of `alt` is attached on this kernel (an fexit
    /// program only where its function is there).
    pub fn wants(&self, p: &Program) -> bool {
        match p.attach {
            Attach::FExit(f) => self
                .fexit_functions
                .as_ref()
                .is_ok_and(|have| have.contains(&f)),
            _ => true,
        }
    }
}

/// Why an alternative was not used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Its kind of hooks.
    pub via: Via,
    /// What was missing, or what loading it said.
    pub reason: String,
}

/// How one capability is measured on this kernel: what the report's
/// `collector.hooks` holds and `pmet check` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    /// What it gives.
    pub capability: Capability,
    /// The hooks used; `None`: nothing on this kernel gives it.
    pub via: Option<Via>,
    /// The programs loaded and attached.
    #[serde(default)]
    pub programs: Vec<String>,
    /// The preferred alternatives that could not be used, and why.
    #[serde(default)]
    pub fell_back: Vec<Refused>,
}

/// The choice of one alternative (by index in [`TABLE`]) per capability.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Chosen alternatives' indices in [`TABLE`], one per capability that
    /// has one.
    pub chosen: Vec<usize>,
    /// Every alternative not used, with the reason, by index.
    pub refused: Vec<(usize, String)>,
}

impl Plan {
    /// The first usable alternative of each capability, given the facts and
    /// the alternatives that already failed to load (`failed`).
    pub fn choose(facts: &Facts, failed: &[(usize, String)]) -> Plan {
        let mut plan = Plan::default();
        for cap in Capability::ALL {
            for (i, alt) in TABLE.iter().enumerate() {
                if alt.capability != cap {
                    continue;
                }
                if let Some((_, why)) = failed.iter().find(|(j, _)| *j == i) {
                    plan.refused.push((i, why.clone()));
                    continue;
                }
                let need = facts.static_need(alt).and_then(|()| plan.depends(alt));
                match need {
                    Ok(()) => {
                        plan.chosen.push(i);
                        break;
                    }
                    Err(why) => plan.refused.push((i, why)),
                }
            }
        }
        plan
    }

    /// What one alternative needs of the others chosen before it.
    fn depends(&self, alt: &Alternative) -> Result<(), String> {
        if alt.capability != Capability::Connections {
            return Ok(());
        }
        match self.via(Capability::Network) {
            Some(Via::TpBtf | Via::Fexit | Via::TpBtfAddress) => Ok(()),
            Some(Via::Tracepoint) => Err(
                "the classic socket tracepoints do not give the socket's own struct sock".into(),
            ),
            None => Err("nothing counts this kernel's socket bytes".into()),
        }
    }

    /// The hooks chosen for `cap`.
    pub fn via(&self, cap: Capability) -> Option<Via> {
        self.chosen
            .iter()
            .map(|&i| &TABLE[i])
            .find(|a| a.capability == cap)
            .map(|a| a.via)
    }

    /// The chosen alternatives.
    pub fn alternatives(&self) -> impl Iterator<Item = (usize, &'static Alternative)> + '_ {
        self.chosen.iter().map(|&i| (i, &TABLE[i]))
    }

    /// Of the alternatives that failed to load in one attempt, the one to
    /// give up first: the last capability's (a later capability's programs
    /// can make an earlier one's fail, e.g. connections' socket cookie in
    /// the network hooks, never the other way round).
    pub fn to_refuse(failures: &[(usize, String)]) -> Option<(usize, String)> {
        failures
            .iter()
            .max_by_key(|(i, _)| (TABLE[*i].capability, *i))
            .cloned()
    }

    /// The report's view: per capability, what is used and what was not.
    pub fn hooks(&self, facts: &Facts) -> Vec<Hook> {
        Capability::ALL
            .iter()
            .map(|&cap| {
                let via = self.via(cap);
                let programs = self
                    .alternatives()
                    .filter(|(_, a)| a.capability == cap)
                    .flat_map(|(_, a)| a.programs.iter().filter(|p| facts.wants(p)))
                    .map(|p| p.name.to_owned())
                    .collect();
                let fell_back = self
                    .refused
                    .iter()
                    .filter(|(i, _)| TABLE[*i].capability == cap)
                    .map(|(i, why)| Refused {
                        via: TABLE[*i].via,
                        reason: why.clone(),
                    })
                    .collect();
                Hook {
                    capability: cap,
                    via,
                    programs,
                    fell_back,
                }
            })
            .collect()
    }
}

/// The alternatives that `PMET_NO_HOOKS` turns off, refused up-front: a
/// comma-separated list of capabilities (`connections`), kinds of hook
/// (`fexit`) or both (`network:fexit`). For a kernel on which a hook
/// misbehaves; each is reported as refused, with this as the reason.
pub fn disabled(spec: &str) -> Vec<(usize, String)> {
    let words: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    TABLE
        .iter()
        .enumerate()
        .filter(|(_, a)| {
            let (cap, via) = (a.capability.name(), a.via.name());
            words.iter().any(|w| match w.split_once(':') {
                Some((c, v)) => c == cap && v == via,
                None => *w == cap || *w == via,
            })
        })
        .map(|(i, _)| (i, format!("turned off by PMET_NO_HOOKS={spec}")))
        .collect()
}

/// Whether `hooks` (a report's) say the network was counted.
pub fn counts(hooks: &[Hook], cap: Capability) -> bool {
    // A report from before hooks were listed counted everything it loaded.
    hooks.is_empty() || hooks.iter().any(|h| h.capability == cap && h.via.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Facts {
        Facts {
            process_btf: Ok(()),
            process_tracepoint: Ok(()),
            task_btf: Ok(()),
            network_btf: Ok(()),
            network_tracepoint: Ok(()),
            fexit_functions: Ok(FEXIT_REQUIRED.to_vec()),
            connections_btf: Ok(()),
        }
    }

    fn vias(p: &Plan) -> Vec<(Capability, Option<Via>)> {
        Capability::ALL.iter().map(|&c| (c, p.via(c))).collect()
    }

    #[test]
    fn every_program_is_in_the_table_once() {
        let mut names: Vec<&str> = TABLE
            .iter()
            .filter(|a| a.via != Via::TpBtfAddress)
            .flat_map(|a| a.programs.iter().map(|p| p.name))
            .collect();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
        assert_eq!(n, 21);
    }

    #[test]
    fn a_kernel_with_everything_uses_btf_tracepoints() {
        let p = Plan::choose(&all(), &[]);
        assert_eq!(
            vias(&p),
            [
                (Capability::Process, Some(Via::TpBtf)),
                (Capability::ExitTotals, Some(Via::TpBtf)),
                (Capability::Network, Some(Via::TpBtf)),
                (Capability::Connections, Some(Via::TpBtf)),
            ]
        );
        assert!(p.refused.is_empty());
    }

    #[test]
    fn before_6_3_the_network_comes_from_fexit_and_connections_stay() {
        // Debian 12's 6.1: no socket tracepoints, no group_dead.
        let facts = Facts {
            process_btf: Err("sched_process_exit has no group_dead".into()),
            network_btf: Err("no BTF tracepoint sock_send_length".into()),
            network_tracepoint: Err("no tracepoint sock:sock_send_length".into()),
            ..all()
        };
        let p = Plan::choose(&facts, &[]);
        assert_eq!(
            vias(&p),
            [
                (Capability::Process, Some(Via::Tracepoint)),
                (Capability::ExitTotals, Some(Via::TpBtf)),
                (Capability::Network, Some(Via::Fexit)),
                (Capability::Connections, Some(Via::TpBtf)),
            ]
        );
        let hooks = p.hooks(&facts);
        let net = &hooks[2];
        assert_eq!(
            net.fell_back,
            vec![
                Refused {
                    via: Via::TpBtf,
                    reason: "no BTF tracepoint sock_send_length".into()
                },
                Refused {
                    via: Via::Tracepoint,
                    reason: "no tracepoint sock:sock_send_length".into()
                },
            ]
        );
        // No inet_sendpage here: its program is not attached.
        assert_eq!(
            net.programs,
            [
                "inet_sendmsg_fx",
                "inet6_sendmsg_fx",
                "inet_recvmsg_fx",
                "inet6_recvmsg_fx"
            ]
        );
    }

    #[test]
    fn a_failed_load_gives_up_the_last_capability_first_and_keeps_the_rest() {
        // 5.10: the connection hooks' socket cookie is refused in tracing
        // programs, and so (while connections are on) are the fexit network
        // programs that call it. Connections go first; the network stays.
        let facts = Facts {
            process_btf: Err("no group_dead".into()),
            network_btf: Err("none".into()),
            network_tracepoint: Err("none".into()),
            ..all()
        };
        let first = Plan::choose(&facts, &[]);
        let net = first
            .alternatives()
            .find(|(_, a)| a.capability == Capability::Network)
            .unwrap()
            .0;
        let conn = first
            .alternatives()
            .find(|(_, a)| a.capability == Capability::Connections)
            .unwrap()
            .0;
        let failures = vec![
            (net, "unknown func bpf_get_socket_cookie".to_owned()),
            (conn, "unknown func bpf_get_socket_cookie".to_owned()),
        ];
        let give_up = Plan::to_refuse(&failures).unwrap();
        assert_eq!(give_up.0, conn);
        let second = Plan::choose(&facts, std::slice::from_ref(&give_up));
        assert_eq!(second.via(Capability::Network), Some(Via::Fexit));
        // Sockets are then named by address.
        assert_eq!(second.via(Capability::Connections), Some(Via::TpBtfAddress));
        let hooks = second.hooks(&facts);
        assert_eq!(
            hooks[3].fell_back[0].reason,
            "unknown func bpf_get_socket_cookie"
        );
        assert!(counts(&hooks, Capability::Network));
        assert!(counts(&hooks, Capability::Connections));
        // Were that refused too, connections would be missing, the rest kept.
        let addr = second
            .alternatives()
            .find(|(_, a)| a.capability == Capability::Connections)
            .unwrap()
            .0;
        let third = Plan::choose(&facts, &[give_up, (addr, "refused".into())]);
        assert_eq!(third.via(Capability::Connections), None);
        assert_eq!(third.via(Capability::Network), Some(Via::Fexit));
        assert!(!counts(&third.hooks(&facts), Capability::Connections));
    }

    #[test]
    fn with_no_network_hook_the_network_is_unknown_and_connections_say_why() {
        let facts = Facts {
            network_btf: Err("a".into()),
            network_tracepoint: Err("b".into()),
            fexit_functions: Err("c".into()),
            ..all()
        };
        let p = Plan::choose(&facts, &[]);
        assert_eq!(p.via(Capability::Network), None);
        assert_eq!(p.via(Capability::Process), Some(Via::TpBtf));
        let hooks = p.hooks(&facts);
        assert!(!counts(&hooks, Capability::Network));
        assert_eq!(
            hooks[3].fell_back[0].reason,
            "nothing counts this kernel's socket bytes"
        );
    }

    #[test]
    fn classic_socket_tracepoints_give_totals_but_no_connections() {
        let facts = Facts {
            network_btf: Err("no sock offsets".into()),
            ..all()
        };
        let p = Plan::choose(&facts, &[]);
        assert_eq!(p.via(Capability::Network), Some(Via::Tracepoint));
        assert_eq!(p.via(Capability::Connections), None);
    }

    #[test]
    fn pmet_no_hooks_turns_off_what_it_names() {
        let off = disabled("connections, network:fexit,tracepoint");
        let names: Vec<(Capability, Via)> = off
            .iter()
            .map(|(i, _)| (TABLE[*i].capability, TABLE[*i].via))
            .collect();
        assert_eq!(
            names,
            [
                (Capability::Process, Via::Tracepoint),
                (Capability::Network, Via::Tracepoint),
                (Capability::Network, Via::Fexit),
                (Capability::Connections, Via::TpBtf),
                (Capability::Connections, Via::TpBtfAddress),
            ]
        );
        let facts = Facts {
            network_btf: Err("none".into()),
            ..all()
        };
        let p = Plan::choose(&facts, &off);
        assert_eq!(p.via(Capability::Network), None);
        assert_eq!(p.via(Capability::Process), Some(Via::TpBtf));
        assert!(disabled("").is_empty());
    }

    #[test]
    fn fexit_needs_all_four_inet_functions() {
        let facts = Facts {
            network_btf: Err("a".into()),
            network_tracepoint: Err("b".into()),
            fexit_functions: Ok(vec!["inet_sendmsg", "inet_recvmsg"]),
            ..all()
        };
        let p = Plan::choose(&facts, &[]);
        assert_eq!(p.via(Capability::Network), None);
        assert!(
            p.refused
                .iter()
                .any(|(_, w)| w == "inet6_sendmsg cannot be traced with the expected parameters")
        );
    }
}
