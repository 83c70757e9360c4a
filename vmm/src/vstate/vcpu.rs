//! A vCPU: its boot configuration (CPUID, MSRs, FPU, LAPIC, registers, MP state) and the
//! thread that runs KVM_RUN and dispatches port-I/O and MMIO exits to the buses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_mp_state, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::exit::{ExitReason, ExitSignal};
use crate::arch::{cpuid, interrupts, msr, regs};
use crate::builder::BootTimer;
use crate::devices::Bus;

/// Stack of a vCPU thread: the run loop and device emulation need little.
const VCPU_STACK_SIZE: usize = 256 << 10;

/// Errors of vCPU set-up.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {id}: KVM_CREATE_VCPU failed: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("vCPU {id}: {what} failed: {source}")]
    Ioctl {
        id: u8,
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: cannot start its thread: {source}")]
    Spawn { id: u8, source: std::io::Error },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    SignalHandler(vmm_sys_util::errno::Error),
    #[error("KVM_GET_SUPPORTED_CPUID failed: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
}

/// What KVM can offer the guest's CPUs, asked once per VM and patched per vCPU: KVM builds
/// the list by running CPUID on the host, and under nested virtualisation each of those
/// instructions is a trip to the outer hypervisor (about 15 us each on the development hosts).
pub struct SupportedCpuid {
    entries: CpuId,
    /// KVM_CAP_TSC_DEADLINE_TIMER: KVM emulates the timer but does not list it in CPUID.
    tsc_deadline: bool,
}

impl SupportedCpuid {
    pub fn query(kvm: &Kvm) -> Result<Self, VcpuError> {
        let entries = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(VcpuError::SupportedCpuid)?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        Ok(Self {
            entries,
            tsc_deadline,
        })
    }

    /// The CPUID of vCPU `id` of `count`.
    fn for_vcpu(&self, id: u8, count: u8) -> CpuId {
        let mut cpuid = self.entries.clone();
        cpuid::patch_cpuid(&mut cpuid, id, count, self.tsc_deadline);
        cpuid
    }
}

/// Run/pause state shared by the vCPU threads and the API.
#[derive(Debug, Default)]
pub struct VcpuControl {
    paused: AtomicBool,
    parked: Mutex<usize>,
    cv: Condvar,
}

impl VcpuControl {
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Blocks the calling vCPU thread while the VM is paused.
    fn park_if_paused(&self, exit: &ExitSignal) {
        if !self.is_paused() {
            return;
        }
        let mut parked = self.parked.lock().expect("vcpu control poisoned");
        *parked += 1;
        self.cv.notify_all();
        while self.is_paused() && !exit.is_requested() {
            parked = self.cv.wait(parked).expect("vcpu control poisoned");
        }
        *parked -= 1;
        self.cv.notify_all();
    }
}

/// One vCPU before its thread starts.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    pio_bus: Bus,
    mmio_bus: Bus,
    exit: Arc<ExitSignal>,
    control: Arc<VcpuControl>,
    /// Logs the first KVM_RUN under `--debug` (boot vCPU only).
    boot_timer: Option<BootTimer>,
}

/// A running vCPU thread.
pub struct VcpuHandle {
    thread: JoinHandle<()>,
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that kicks a vCPU thread out of KVM_RUN (EINTR).
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// Installs the (empty) kick signal handler once per process.
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::SignalHandler)
}

impl Vcpu {
    /// KVM_CREATE_VCPU for vCPU `id`.
    pub fn new(
        vm: &VmFd,
        id: u8,
        pio_bus: Bus,
        mmio_bus: Bus,
        exit: Arc<ExitSignal>,
        control: Arc<VcpuControl>,
        boot_timer: Option<BootTimer>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Self {
            id,
            fd,
            pio_bus,
            mmio_bus,
            exit,
            control,
            boot_timer,
        })
    }

    fn ioctl<T>(
        &self,
        what: &'static str,
        r: Result<T, kvm_ioctls::Error>,
    ) -> Result<T, VcpuError> {
        r.map_err(|source| VcpuError::Ioctl {
            id: self.id,
            what,
            source,
        })
    }

    /// CPUID, MSRs, FPU and LAPIC for every vCPU; registers and RUNNABLE state for the boot
    /// vCPU (which starts at `entry`); the others wait for INIT/SIPI from the guest.
    pub fn configure(
        &self,
        supported: &SupportedCpuid,
        count: u8,
        entry: u64,
    ) -> Result<(), VcpuError> {
        let cpuid = supported.for_vcpu(self.id, count);
        self.ioctl("KVM_SET_CPUID2", self.fd.set_cpuid2(&cpuid))?;

        let msrs = msr::boot_msrs();
        let set = self.ioctl("KVM_SET_MSRS", self.fd.set_msrs(&msrs))?;
        if set != msrs.as_slice().len() {
            tracing::debug!(
                vcpu = self.id,
                set,
                "KVM_SET_MSRS: not every boot MSR is supported"
            );
        }
        self.ioctl("KVM_SET_FPU", self.fd.set_fpu(&regs::boot_fpu()))?;
        let mut lapic = self.ioctl("KVM_GET_LAPIC", self.fd.get_lapic())?;
        interrupts::set_lint(&mut lapic);
        self.ioctl("KVM_SET_LAPIC", self.fd.set_lapic(&lapic))?;

        if self.id == 0 {
            let sregs = self.ioctl("KVM_GET_SREGS", self.fd.get_sregs())?;
            self.ioctl("KVM_SET_SREGS", self.fd.set_sregs(&regs::pvh_sregs(sregs)))?;
            self.ioctl("KVM_SET_REGS", self.fd.set_regs(&regs::pvh_regs(entry)))?;
        }
        let mp_state = kvm_mp_state {
            mp_state: if self.id == 0 {
                KVM_MP_STATE_RUNNABLE
            } else {
                KVM_MP_STATE_UNINITIALIZED
            },
        };
        self.ioctl("KVM_SET_MP_STATE", self.fd.set_mp_state(mp_state))
    }

    /// Starts the vCPU thread.
    pub fn start_threaded(mut self) -> Result<VcpuHandle, VcpuError> {
        let id = self.id;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .stack_size(VCPU_STACK_SIZE)
            .spawn(move || {
                let reason = self.run_loop();
                self.exit.request(reason);
            })
            .map_err(|source| VcpuError::Spawn { id, source })?;
        Ok(VcpuHandle { thread })
    }

    /// Runs the guest until it stops or another thread requests the exit.
    fn run_loop(&mut self) -> ExitReason {
        loop {
            self.control.park_if_paused(&self.exit);
            if let Some(reason) = self.exit.reason() {
                return reason;
            }
            if let Some(reason) = self.run_once() {
                return reason;
            }
        }
    }

    /// One KVM_RUN; returns why the vCPU must stop, if it must.
    fn run_once(&mut self) -> Option<ExitReason> {
        let id = self.id;
        if let Some(timer) = self.boot_timer.take() {
            timer.phase("first KVM_RUN");
        }
        let exit = match self.fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => return None,
            Err(e) => {
                return Some(ExitReason::VcpuError {
                    vcpu: id,
                    message: format!("KVM_RUN failed: {e}"),
                })
            }
        };
        match exit {
            VcpuExit::IoIn(port, data) => {
                if !self.pio_bus.read(u64::from(port), data) {
                    // No device: the bus floats high.
                    data.fill(0xff);
                }
                None
            }
            VcpuExit::IoOut(port, data) => {
                if !self.pio_bus.write(u64::from(port), data) {
                    tracing::trace!(port, "write to an unclaimed port");
                }
                None
            }
            VcpuExit::MmioRead(addr, data) => {
                if !self.mmio_bus.read(addr, data) {
                    tracing::debug!(addr, len = data.len(), "read of unmapped MMIO");
                    data.fill(0xff);
                }
                None
            }
            VcpuExit::MmioWrite(addr, data) => {
                if !self.mmio_bus.write(addr, data) {
                    tracing::debug!(addr, len = data.len(), "write to unmapped MMIO");
                }
                None
            }
            VcpuExit::Hlt => None,
            VcpuExit::Intr | VcpuExit::IrqWindowOpen => None,
            // A reset already requested through the i8042 wins over a later shutdown.
            VcpuExit::Shutdown => Some(ExitReason::TripleFault { vcpu: id }),
            VcpuExit::SystemEvent(kind, _) => Some(ExitReason::SystemEvent(kind)),
            VcpuExit::FailEntry(reason, _) => Some(ExitReason::FailEntry { vcpu: id, reason }),
            VcpuExit::InternalError => {
                // SAFETY: on KVM_EXIT_INTERNAL_ERROR the `internal` member of the exit union
                // is the one KVM filled.
                let suberror = unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal.suberror };
                if let (Ok(r), Ok(s)) = (self.fd.get_regs(), self.fd.get_sregs()) {
                    tracing::error!(
                        vcpu = id,
                        "internal error at rip={:#x} cs.base={:#x} cr0={:#x} efer={:#x}",
                        r.rip,
                        s.cs.base,
                        s.cr0,
                        s.efer
                    );
                }
                Some(ExitReason::InternalError { vcpu: id, suberror })
            }
            other => Some(ExitReason::VcpuError {
                vcpu: id,
                message: format!("unhandled KVM exit {other:?}"),
            }),
        }
    }
}

impl VcpuHandle {
    /// Interrupts KVM_RUN on this vCPU's thread.
    pub fn kick(&self) {
        // ESRCH once the thread has ended is fine.
        let _ = self.thread.kill(kick_signal());
    }
}

/// Stops every vCPU at its next exit and waits until all are parked.
pub fn pause_vcpus(control: &VcpuControl, handles: &[VcpuHandle], exit: &ExitSignal) {
    control.paused.store(true, Ordering::SeqCst);
    let mut parked = control.parked.lock().expect("vcpu control poisoned");
    while *parked < handles.len() && !exit.is_requested() {
        // A kick can land just before a thread enters KVM_RUN; repeat until all park.
        handles.iter().for_each(VcpuHandle::kick);
        parked = control
            .cv
            .wait_timeout(parked, Duration::from_millis(10))
            .expect("vcpu control poisoned")
            .0;
    }
}

/// Lets paused vCPUs run again.
pub fn resume_vcpus(control: &VcpuControl) {
    control.paused.store(false, Ordering::SeqCst);
    let _guard = control.parked.lock().expect("vcpu control poisoned");
    control.cv.notify_all();
}

/// Wakes every vCPU so it sees a requested exit and returns.
pub fn stop_vcpus(control: &VcpuControl, handles: &[VcpuHandle]) {
    {
        let _guard = control.parked.lock().expect("vcpu control poisoned");
        control.cv.notify_all();
    }
    handles.iter().for_each(VcpuHandle::kick);
}
