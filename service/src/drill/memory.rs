//! The drill process's own peak memory, measured per job: the kernel's
//! high-water mark of this process's resident memory (`VmHWM` in
//! `/proc/self/status`), reset before each job through
//! `/proc/self/clear_refs`. Programs a drill starts (etcd, postgres,
//! pg_restore) are separate processes and not counted.

use std::io::Write;

/// Starts a new high-water mark at the current resident size. Returns
/// whether the kernel took it (Linux 4.0 or newer, `/proc` mounted).
pub(crate) fn reset_peak() -> bool {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .and_then(|mut file| file.write_all(b"5"))
        .is_ok()
}

/// The most resident memory this process has held since it started or
/// since the last [`reset_peak`], in bytes; `None` without `/proc`.
pub(crate) fn peak_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    high_water_mark(&status)
}

/// `VmHWM` of a `/proc/PID/status` text, in bytes.
fn high_water_mark(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    let kib = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kib.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_high_water_mark_is_read_from_the_status_text() {
        let status =
            "Name:\tlifeboat\nVmPeak:\t  300000 kB\nVmHWM:\t   71234 kB\nVmRSS:\t 5000 kB\n";
        assert_eq!(high_water_mark(status), Some(71_234 * 1024));
        assert_eq!(high_water_mark("VmHWM:\t garbage kB\n"), None);
        assert_eq!(high_water_mark("VmRSS:\t 5000 kB\n"), None);
    }

    #[test]
    fn a_reset_lowers_the_mark_to_what_is_resident() {
        if !reset_peak() {
            return; // no /proc here: nothing to measure
        }
        let before = peak_bytes().unwrap_or_default();
        // Touch 256 MiB, give it back, reset: the mark falls again (the
        // margins leave room for tests running beside this one).
        let mut big = vec![0u8; 256 << 20];
        big.iter_mut().step_by(4096).for_each(|b| *b = 1);
        let touched = peak_bytes().unwrap_or_default();
        assert!(touched >= before + (250 << 20), "{before} → {touched}");
        drop(big);
        assert!(reset_peak());
        let after = peak_bytes().unwrap_or_default();
        assert!(after + (128 << 20) < touched, "{touched} → {after}");
    }
}
