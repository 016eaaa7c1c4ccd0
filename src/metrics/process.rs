//! The process figures every Prometheus client library exports, under their
//! usual names so stock dashboards find them: CPU seconds, resident and
//! virtual memory, open and maximum file descriptors, start time. Read at
//! scrape time from the kernel (`getrusage`, `getrlimit`, `/proc`); a
//! figure the platform does not give is left out rather than reported as 0.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(cpu) = cpu_seconds() {
            let m = ConstCounter::new(cpu);
            m.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent in seconds",
                Some(&Unit::Seconds),
                m.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                Some(Unit::Bytes),
                memory().map(|m| m.1),
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes",
                Some(Unit::Bytes),
                memory().map(|m| m.0),
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                None,
                open_fds(),
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                None,
                max_fds(),
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch in seconds",
                Some(Unit::Seconds),
                start_time(),
            ),
        ];
        for (name, help, unit, value) in gauges {
            let Some(value) = value else { continue };
            let m = ConstGauge::new(value);
            m.encode(encoder.encode_descriptor(name, help, unit.as_ref(), m.metric_type())?)?;
        }
        Ok(())
    }
}

/// User plus system CPU time of every thread, in seconds.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes into the struct we hand it and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

fn page_size() -> i64 {
    // SAFETY: sysconf only reads a system constant.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as i64).max(1)
}

fn clock_ticks() -> f64 {
    // SAFETY: as above.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64).max(1.0)
}

/// (virtual, resident) bytes, from /proc/self/statm.
fn memory() -> Option<(i64, i64)> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_whitespace().map(|f| f.parse::<i64>().ok());
    let (size, resident) = (fields.next()??, fields.next()??);
    Some((size * page_size(), resident * page_size()))
}

fn open_fds() -> Option<i64> {
    let dir = std::fs::read_dir("/proc/self/fd").ok()?;
    // Less the descriptor read_dir holds open while it reads.
    Some(dir.count() as i64 - 1)
}

fn max_fds() -> Option<i64> {
    // SAFETY: getrlimit writes into the struct we hand it.
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    i64::try_from(limit.rlim_cur).ok()
}

/// From /proc/self/stat's start time (clock ticks after boot) and
/// /proc/stat's boot time.
fn start_time() -> Option<i64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces and parentheses: count
    // fields after its closing parenthesis. Start time is field 22.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: f64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(boot + (ticks / clock_ticks()) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_are_this_process_s() {
        let cpu = cpu_seconds().unwrap();
        assert!(cpu > 0.0);
        if cfg!(target_os = "linux") {
            let (virt, rss) = memory().unwrap();
            assert!(rss > 1 << 20 && virt >= rss, "{virt} {rss}");
            let before = open_fds().unwrap();
            let f = std::fs::File::open("/proc/self/stat").unwrap();
            assert_eq!(open_fds().unwrap(), before + 1);
            drop(f);
            assert!(max_fds().unwrap() >= before);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let started = start_time().unwrap();
            assert!(started <= now && started > now - 3600, "{started} {now}");
        }
    }
}
