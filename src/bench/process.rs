//! Reading another process's CPU time and memory from /proc.

use std::io;

/// One reading of a process's resource use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// User plus system CPU time of all its threads, in nanoseconds.
    pub cpu_ns: u64,
    /// Of which system time: in the kernel on its behalf (syscalls, and
    /// the loopback's network stack that its writes run).
    pub system_ns: u64,
    /// Resident set size, in bytes.
    pub rss_bytes: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`.
pub fn sample(pid: u32) -> io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse(&stat, &status).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}"),
        )
    })
}

fn parse(stat: &str, status: &str) -> Option<Sample> {
    // The command name (field 2) may hold spaces; fields are counted after its ')'.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; 3 is the first after ')'.
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as u64,
        _ => 100,
    };
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(Sample {
        cpu_ns: (utime + stime) * (1_000_000_000 / ticks),
        system_ns: stime * (1_000_000_000 / ticks),
        rss_bytes: rss_kib * 1024,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200";
        let status = "Name:\tx\nVmRSS:\t   2048 kB\nThreads:\t3\n";
        let s = parse(stat, status).unwrap();
        assert_eq!(s.rss_bytes, 2048 * 1024);
        let tick_ns = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(s.cpu_ns, 300 * tick_ns);
        assert_eq!(s.system_ns, 50 * tick_ns);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
    }
}
