//! Thread priority and affinity for the preemptive split (see
//! [`LaneSplit::Preemptive`](crate::placement::LaneSplit)).
//!
//! Light lanes keep the OS's normal priority, one pinned to each core. Heavy lanes are
//! allowed onto every core of the engine and run under Linux's `SCHED_IDLE`: the
//! scheduler gives them only the time no normal thread wants, and a normal thread that
//! wakes preempts one at once (CFS wake-up preemption). That is preemptive priority by
//! class with no cooperation from the user's code: a light call waits at most for the
//! kernel to switch threads, never for a heavy call to end, and heavy work still uses
//! every core that light work leaves idle.
//!
//! Lowering one's own priority needs no privilege, but a container or another OS may
//! refuse `SCHED_IDLE`; the thread then asks for nice 19 (weighted about 1/70 of a normal
//! thread by CFS, but not preempted at once), and where that is refused too it runs at
//! normal priority and says so (once, as a warning, and in each lane's
//! [`LaneInfo::priority`](crate::lanes::LaneInfo)). The calling thread is the only one
//! changed: the process's other threads keep their priority.

use crate::placement::LanePriority;

/// Lowers the calling thread to the lowest priority the OS grants: `SCHED_IDLE`, else
/// the nice value `nice`.
pub(crate) fn lower_current(nice: i8) -> LanePriority {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread with a valid parameter block;
    // `gettid` cannot fail, and a refused change leaves the thread as it was.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 {
            return LanePriority::Idle;
        }
        let tid = current_tid() as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, libc::c_int::from(nice)) == 0 {
            return LanePriority::Nice(nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
    LanePriority::Refused
}

/// The calling thread's priority, put back to normal if it was lowered (a thread inherits
/// its creator's policy, and a replacement lane may be started from a low-priority one).
pub(crate) fn normal_current() -> LanePriority {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread with a valid parameter block.
    unsafe {
        if libc::sched_getscheduler(0) != libc::SCHED_OTHER {
            let param = libc::sched_param { sched_priority: 0 };
            if libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) != 0 {
                return LanePriority::Refused;
            }
        }
    }
    LanePriority::Normal
}

/// The calling thread's id (0 where there is none to read).
pub(super) fn current_tid() -> i32 {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` takes no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) as i32 };
    #[cfg(not(target_os = "linux"))]
    let tid = 0;
    tid
}

/// The cores in the calling thread's affinity mask (the process's, for a thread that
/// has not pinned itself).
pub(super) fn current_affinity() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|id| id.id).collect())
        .unwrap_or_default()
}

/// Allows the calling thread onto `cores` (all of them; none: leaves the mask as it is).
/// Returns whether the mask was set.
pub(crate) fn allow_cores(cores: &[usize]) -> bool {
    if cores.is_empty() {
        return false;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `set` is a plain bitmask struct, zeroed and then filled by `CPU_SET` with
    // indices checked against its capacity; the syscall reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
        for &core in cores.iter().filter(|&&core| core < capacity) {
            libc::CPU_SET(core, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowers_only_itself() {
        let lowered = std::thread::spawn(|| {
            let priority = lower_current(19);
            // SAFETY: a plain query of the calling thread.
            let policy = unsafe { libc::sched_getscheduler(0) };
            (priority, policy)
        })
        .join()
        .unwrap();
        match lowered {
            (LanePriority::Idle, policy) => assert_eq!(policy, libc::SCHED_IDLE),
            (LanePriority::Nice(19), policy) => assert_eq!(policy, libc::SCHED_OTHER),
            (other, _) => panic!("could not lower a thread's priority: {other:?}"),
        }
        // SAFETY: a plain query of the calling thread.
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, libc::SCHED_OTHER);
    }
}
