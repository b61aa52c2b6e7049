//! Thread scheduling policy: `sched_batch: true` puts the proxy's threads
//! under Linux `SCHED_BATCH`.
//!
//! A proxy sharing cores with PostgreSQL and its clients is woken by every
//! message; under the default policy each wakeup may preempt the backend
//! that just sent it, and the proxy then handles one or two events per
//! wakeup. A batch thread waits for its turn instead and finds several
//! events ready: on the 2-core benchmark box (pgbench select-only, 32 and
//! 128 clients) that was 7–8 % more TPS at 17–18 % less proxy CPU per
//! transaction, and no change at 8 clients (BENCHMARKS.md), for a wakeup
//! delay of up to one scheduler slice when the cores are busy. It is the
//! default since the hot path got cheap enough for the scheduling cost to
//! show (15–25 % less CPU per transaction at 32 clients, BENCHMARKS.md).

/// Switches the calling thread to `SCHED_BATCH`; logs (once per process)
/// and carries on if the kernel refuses.
pub fn batch_this_thread() {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid sched_param for the whole call and pid
        // 0 names the calling thread; the call reads nothing else.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &raw const param) };
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if rc != 0 && !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                hint = "sched_batch: false in proxy.yaml keeps the default policy",
                "cannot switch the proxy's threads to SCHED_BATCH"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn the_calling_thread_becomes_a_batch_thread() {
        std::thread::spawn(|| {
            super::batch_this_thread();
            // SAFETY: no arguments; reads the calling thread's policy.
            let policy = unsafe { libc::sched_getscheduler(0) };
            assert_eq!(policy, libc::SCHED_BATCH);
        })
        .join()
        .unwrap();
    }
}
