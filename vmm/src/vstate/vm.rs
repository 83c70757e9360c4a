//! The KVM VM: created with an in-kernel irqchip (PIC, IOAPIC, LAPICs), its TSS and
//! identity-map pages placed in the MMIO gap, and guest memory registered as slots.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{Address, GuestMemory, GuestMemoryRegion};

use super::memory::GuestMemoryMmap;
use crate::arch::layout::{KVM_IDENTITY_MAP_ADDRESS, KVM_TSS_ADDRESS};

/// Errors of VM creation.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),
    #[error("KVM_CREATE_VM failed: {0}")]
    CreateVm(kvm_ioctls::Error),
    #[error("KVM_SET_TSS_ADDR failed: {0}")]
    SetTss(kvm_ioctls::Error),
    #[error("KVM_SET_IDENTITY_MAP_ADDR failed: {0}")]
    SetIdentityMap(kvm_ioctls::Error),
    #[error("KVM_CREATE_IRQCHIP failed: {0}")]
    CreateIrqchip(kvm_ioctls::Error),
    #[error("KVM_CREATE_PIT2 failed: {0}")]
    CreatePit(kvm_ioctls::Error),
    #[error("KVM_SET_USER_MEMORY_REGION (slot {slot}) failed: {source}")]
    MemorySlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

/// The KVM system handle and the VM.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Opens /dev/kvm and creates the VM.
    pub fn create_vm() -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::KvmApiVersion(version));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        Ok(Self { kvm, fd })
    }

    /// TSS and identity map (used by VMX for real mode), then the irqchip, and the PIT only
    /// if [`Vm::needs_pit`]. Must run before vCPUs are created.
    pub fn setup_irqchip(&self) -> Result<(), VmError> {
        self.fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .map_err(VmError::SetTss)?;
        self.fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(VmError::SetIdentityMap)?;
        self.fd.create_irq_chip().map_err(VmError::CreateIrqchip)?;
        if !self.needs_pit() {
            return Ok(());
        }
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(VmError::CreatePit)
    }

    /// Whether the guest needs an i8254 PIT. Linux leaves the PIT alone when it knows the
    /// TSC frequency (kvmclock) and the LAPIC has the TSC-deadline timer and keeps running
    /// in deep C-states (ARAT, which KVM always reports): `apic_needs_pit()` is then false.
    /// We advertise TSC-deadline exactly when KVM emulates it, so the PIT is only created on
    /// a KVM without it. An in-kernel PIT is not free: a kernel worker thread to start, and
    /// at VM teardown that thread to stop plus four SRCU grace periods, which on a busy host
    /// were 20 to 25 ms, most of the bare-guest start-to-exit time (docs/benchmarks.md).
    pub fn needs_pit(&self) -> bool {
        !self.kvm.check_extension(Cap::TscDeadlineTimer)
    }

    /// Registers each guest memory region as a KVM memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .expect("a mapped region has a host address");
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the host range [userspace_addr, +memory_size) is a live mapping owned
            // by `mem`, which the caller keeps alive for as long as the VM exists.
            unsafe { self.fd.set_user_memory_region(region) }
                .map_err(|source| VmError::MemorySlot { slot, source })?;
        }
        Ok(())
    }

    /// Whether KVM can make a memory slot read-only (`KVM_MEM_READONLY`): guest writes to
    /// it then exit to us as MMIO instead of changing the memory.
    pub fn has_readonly_memory(&self) -> bool {
        self.kvm.check_extension(Cap::ReadonlyMem)
    }

    /// Registers `len` bytes of this process's memory at `host_addr` as slot `slot` at
    /// guest physical address `guest_addr` (a pmem region), read-only if `read_only`.
    ///
    /// # Safety
    ///
    /// `host_addr..host_addr + len` must be a mapping that stays alive for as long as the
    /// VM exists (the guest reads and maybe writes it at any time).
    pub unsafe fn register_region(
        &self,
        slot: u32,
        guest_addr: u64,
        len: u64,
        host_addr: u64,
        read_only: bool,
    ) -> Result<(), VmError> {
        let region = kvm_userspace_memory_region {
            slot,
            flags: if read_only { KVM_MEM_READONLY } else { 0 },
            guest_phys_addr: guest_addr,
            memory_size: len,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller guarantees the host range outlives the VM.
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(|source| VmError::MemorySlot { slot, source })
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
