//! The host's network plumbing for tasks: what containers need from the instance's network
//! stack, outside Docker. Today the NAT that makes the task endpoint (credentials and metadata on
//! `127.0.0.1:51679`) answer on `169.254.170.2:80` from bridge and host-network containers and
//! from dockerd itself ([`host_nat`], task-credentials.md §6–7), and the awsvpc network mode's
//! seam to the kernel ([`awsvpc`]: a task's ENI in its pause container's namespace; issue 22).
//!
//! Owns the rules and sysctls it installs: installed idempotently at start (check before add),
//! removed on a clean stop. Never touches a rule it did not add, never uses a firewall framework
//! of its own: the `iptables` commands, as Docker does, so both back-ends work.

pub mod awsvpc;
pub mod host_nat;
