//! Network: `sock/sock_send_length` and `sock/sock_recv_length` (bytes per process, in
//! process context, IPv4/IPv6 only), `sock/inet_sock_set_state` (TCP connections opened,
//! accepted and closed) and `tcp/tcp_retransmit_skb`. Closes and retransmits often run in
//! softirq, where `current` is unrelated: the socket's owner, learnt in process context, is
//! used. A connection accepted by a listener gets the listener's owner when its handshake
//! completes (in softirq too): listeners are remembered by network namespace and port when
//! they start listening, so server-side sockets have an owner on every kernel, with or
//! without the `sock` length tracepoints.
//!
//! A connection is counted closed when its owner ends its side of it — `close(2)` or
//! `shutdown(2)` of an open connection (established → FIN-wait-1, or close-wait →
//! last-ack), in the owner's context and so while the owner is alive — or when it is
//! torn down without that (a reset, a connect that failed). The socket's final move to
//! `TCP_CLOSE` after an orderly close waits for the peer's FIN and can come long after its
//! owner has exited: it only forgets the owner.

use agent_common::{Drop, ListenKey, ProcKey, prog};
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};

use crate::{
    config,
    maps::{LISTENERS, SOCK_OWNER},
    util::{Mem, Probe, add, count_drop, current_key, proc_entry, proc_existing, tp_field_at},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;

#[inline(always)]
fn remember_owner(sk: u64, key: ProcKey) {
    // SAFETY: map value read.
    if unsafe { SOCK_OWNER.get(sk) } != Some(&key) {
        // LRU: never fails for lack of room; stale sockets age out.
        let _ = SOCK_OWNER.insert(sk, key, 0);
    }
}

#[inline(always)]
fn on_length(ctx: &TracePointContext, send: bool) -> Option<()> {
    let p = if send {
        prog::SOCK_SEND_LENGTH
    } else {
        prog::SOCK_RECV_LENGTH
    };
    let family: u16 = tp_field_at::<_, 16>(ctx, p, config!(tp.sock_len_family))?;
    if family != AF_INET && family != AF_INET6 {
        return None;
    }
    let ret: i32 = tp_field_at::<_, 20>(ctx, p, config!(tp.sock_len_ret))?;
    let sk: u64 = tp_field_at::<_, 8>(ctx, p, config!(tp.sock_len_sk))?;
    let key = current_key();
    let stats = proc_entry(p, key)?;
    if send {
        add(&mut stats.net_tx_calls, 1);
    } else {
        add(&mut stats.net_rx_calls, 1);
    }
    if ret > 0 {
        if send {
            add(&mut stats.net_tx_bytes, ret as u64);
        } else {
            add(&mut stats.net_rx_bytes, ret as u64);
        }
    }
    remember_owner(sk, key);
    Some(())
}

#[tracepoint(category = "sock", name = "sock_send_length")]
pub fn sock_send_length(ctx: TracePointContext) -> u32 {
    let _ = on_length(&ctx, true);
    0
}

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let _ = on_length(&ctx, false);
    0
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

/// A listening port: the socket's network namespace (0 without BTF) and local port.
#[inline(always)]
fn listen_key(sk: u64, port: u16) -> ListenKey {
    let net = Probe::ptr(sk as *const u8, config!(task.sock_net));
    ListenKey {
        netns: Probe::read::<u32>(net, config!(task.net_inum)),
        port,
        _pad: 0,
    }
}

fn try_set_state(ctx: &TracePointContext) -> Option<()> {
    const P: u32 = prog::INET_SOCK_SET_STATE;
    let protocol: u16 = tp_field_at::<_, 30>(ctx, P, config!(tp.set_state_protocol))?;
    if protocol != IPPROTO_TCP {
        return None;
    }
    let old: i32 = tp_field_at::<_, 16>(ctx, P, config!(tp.set_state_old))?;
    let new: i32 = tp_field_at::<_, 20>(ctx, P, config!(tp.set_state_new))?;
    let sk: u64 = tp_field_at::<_, 8>(ctx, P, config!(tp.set_state_sk))?;
    if new == TCP_SYN_SENT {
        // connect(2), in the connecting task's context.
        let key = current_key();
        let p = proc_entry(P, key)?;
        add(&mut p.conn_opened, 1);
        remember_owner(sk, key);
    } else if new == TCP_LISTEN {
        // listen(2), in the listening task's context.
        let sport: u16 = tp_field_at::<_, 24>(ctx, P, config!(tp.set_state_sport))?;
        let key = current_key();
        proc_entry(P, key)?;
        let _ = LISTENERS.insert(listen_key(sk, sport), key, 0);
    } else if new == TCP_ESTABLISHED && old == TCP_SYN_RECV {
        // A connection accepted by a listener: its handshake completed (softirq).
        let sport: u16 = tp_field_at::<_, 24>(ctx, P, config!(tp.set_state_sport))?;
        // SAFETY: map value read.
        let Some(owner) = (unsafe { LISTENERS.get(listen_key(sk, sport)) }).copied() else {
            count_drop(P, Drop::OwnerUnknown);
            return None;
        };
        remember_owner(sk, owner);
        add(&mut proc_existing(P, &owner)?.conn_accepted, 1);
    } else if new == TCP_CLOSE && old == TCP_LISTEN {
        let sport: u16 = tp_field_at::<_, 24>(ctx, P, config!(tp.set_state_sport))?;
        let _ = LISTENERS.remove(listen_key(sk, sport));
    } else if (old == TCP_ESTABLISHED && new == TCP_FIN_WAIT1)
        || (old == TCP_CLOSE_WAIT && new == TCP_LAST_ACK)
    {
        // The owner ended its side (close or shutdown); the owner is kept for the FIN's
        // retransmits.
        count_close(sk, false)?;
    } else if new == TCP_CLOSE {
        // Counted already if it got here by an orderly close; a reset, or a connect that
        // failed, is counted now.
        let orderly = !matches!(
            old,
            TCP_ESTABLISHED | TCP_CLOSE_WAIT | TCP_SYN_SENT | TCP_SYN_RECV
        );
        if orderly {
            let _ = SOCK_OWNER.remove(sk);
        } else {
            count_close(sk, true)?;
        }
    }
    Some(())
}

/// Counts a closed connection for the socket's owner, forgetting the owner if `forget`.
#[inline(always)]
fn count_close(sk: u64, forget: bool) -> Option<()> {
    const P: u32 = prog::INET_SOCK_SET_STATE;
    // SAFETY: map value read.
    let Some(owner) = (unsafe { SOCK_OWNER.get(sk) }).copied() else {
        count_drop(P, Drop::SockOwnerUnknown);
        return None;
    };
    if forget {
        let _ = SOCK_OWNER.remove(sk);
    }
    add(&mut proc_existing(P, &owner)?.conn_closed, 1);
    Some(())
}

#[tracepoint(category = "tcp", name = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let _ = try_retransmit(&ctx);
    0
}

fn try_retransmit(ctx: &TracePointContext) -> Option<()> {
    const P: u32 = prog::TCP_RETRANSMIT_SKB;
    let sk: u64 = tp_field_at::<_, 16>(ctx, P, config!(tp.retrans_sk))?;
    // SAFETY: map value read.
    let Some(owner) = (unsafe { SOCK_OWNER.get(sk) }).copied() else {
        count_drop(P, Drop::SockOwnerUnknown);
        return None;
    };
    add(&mut proc_existing(P, &owner)?.retransmits, 1);
    Some(())
}
