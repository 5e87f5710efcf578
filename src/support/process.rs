//! Holder ids that name a process of this host, so that what a killed process held (a case's
//! lease, a mailbox's slots) is freed at once by the processes that outlive it.

/// Prefix of the holder ids of workers whose process can be checked on this host.
const LOCAL: &str = "local:";

/// A lease-holder id for a worker of this process. On a host where processes can be checked
/// (Linux's `/proc`), `local:{host}:{boot}:{pid}:{start}:{uuid}`: a worker that meets a lease
/// of a process of this host that is gone (killed by SIGKILL, out of memory, the host
/// restarted) takes the case at once instead of waiting up to the lease's length. Elsewhere,
/// and for workers whose peers run on other hosts (Lambda), `worker-{uuid}`: only time ends
/// their leases.
pub fn holder_id(checkable: bool) -> String {
    let id = uuid::Uuid::new_v4().simple();
    match this_process().filter(|_| checkable) {
        Some(process) => format!("{LOCAL}{process}:{id}"),
        None => format!("worker-{id}"),
    }
}

/// This process as `{host}:{boot}:{pid}:{start}` (the start time tells a reused pid apart).
fn this_process() -> Option<String> {
    let pid = std::process::id();
    Some(format!(
        "{}:{}:{pid}:{}",
        host()?,
        boot()?,
        start_time(pid)?
    ))
}

/// This host's name, read once (as `:`-free text).
fn host() -> Option<&'static str> {
    static HOST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
        let name = name.trim().replace(':', "_");
        (!name.is_empty()).then_some(name)
    })
    .as_deref()
}

/// This boot's id (its first 12 hex digits), read once.
fn boot() -> Option<&'static str> {
    static BOOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id: String = id.trim().chars().filter(|c| *c != '-').take(12).collect();
        (!id.is_empty()).then_some(id)
    })
    .as_deref()
}

/// A process's start time (clock ticks after boot, field 22 of `/proc/{pid}/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `holder` names a process of this host that no longer runs. A holder of another
/// host, or one that cannot be checked, is never gone: its lease runs out in time.
pub fn holder_is_gone(holder: &str) -> bool {
    let Some(rest) = holder.strip_prefix(LOCAL) else {
        return false;
    };
    let parts: Vec<&str> = rest.split(':').collect();
    let [held_host, held_boot, pid, start, _id] = parts.as_slice() else {
        return false;
    };
    if host() != Some(*held_host) {
        return false;
    }
    let Some(this_boot) = boot() else {
        return false;
    };
    if this_boot != *held_boot {
        // The host restarted since: every process of that boot is gone.
        return true;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    match start_time(pid) {
        None => std::path::Path::new("/proc/self/stat").exists(),
        Some(started) => start.parse::<u64>().ok() != Some(started),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_that_is_gone_is_told_apart_from_one_that_runs() {
        let mine = holder_id(true);
        if !mine.starts_with(LOCAL) {
            return; // no /proc here: only time ends leases
        }
        assert!(!holder_is_gone(&mine), "{mine}");
        // A child that has exited: its pid no longer runs (or runs another process).
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let started = start_time(pid);
        child.wait().unwrap();
        let parts: Vec<&str> = mine.split(':').collect();
        let gone = format!(
            "local:{}:{}:{pid}:{}:x",
            parts[1],
            parts[2],
            started.unwrap_or(1)
        );
        assert!(holder_is_gone(&gone), "{gone}");
        // Another boot of this host: gone. Another host, or a cloud worker: only time.
        let rebooted = format!(
            "local:{}:000000000000:{}:{}:x",
            parts[1], parts[3], parts[4]
        );
        assert!(holder_is_gone(&rebooted));
        let elsewhere = format!("local:other-host:{}:1:1:x", parts[2]);
        assert!(!holder_is_gone(&elsewhere));
        assert!(!holder_is_gone("worker-0123"));
    }
}
