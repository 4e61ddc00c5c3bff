//! One file per hook. Each program is a thin wrapper around a `try_` function.

mod block;
mod cgroup;
mod page_fault;
mod rss_stat;
mod sched_process;
mod sched_switch;
mod sched_wakeup;
mod sock;
mod sys_exit;
mod task_iter;
