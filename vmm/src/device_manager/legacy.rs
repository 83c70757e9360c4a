//! The legacy port-I/O devices of a PC: the serial console on 0x3f8 (IRQ 4 through an
//! irqfd), the i8042 on 0x60-0x64, and sinks for ports Linux writes without reading back.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::layout::{KEYBOARD_IRQ, SERIAL_IRQ};
use crate::config::SerialOutput;
use crate::devices::legacy::{PortSink, SerialDevice, I8042};
use crate::devices::{Bus, BusError};
use crate::vstate::ExitSignal;

/// COM1.
pub const SERIAL_PORT: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;
/// The i8042 data (0x60) and command/status (0x64) ports.
pub const I8042_PORT: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
/// POST code / I/O delay port.
pub const POST_PORT: u64 = 0x80;

/// Errors of legacy device set-up.
#[derive(Debug, thiserror::Error)]
pub enum LegacyDeviceError {
    #[error("--serial {path}: cannot create: {source}")]
    SerialFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create the serial interrupt eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot register the irqfd of IRQ {irq}: {source}")]
    Irqfd { irq: u32, source: kvm_ioctls::Error },
    #[error("cannot place a legacy device on the port bus: {0}")]
    Bus(#[from] BusError),
}

/// The legacy devices, kept to flush and feed the serial port.
pub struct PortIoDeviceManager {
    pub serial: Arc<Mutex<SerialDevice>>,
    pub i8042: Arc<Mutex<I8042>>,
}

fn irqfd(vm: &VmFd, irq: u32) -> Result<EventFd, LegacyDeviceError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(LegacyDeviceError::EventFd)?;
    vm.register_irqfd(&evt, irq)
        .map_err(|source| LegacyDeviceError::Irqfd { irq, source })?;
    Ok(evt)
}

fn serial_writer(output: &SerialOutput) -> Result<Box<dyn Write + Send>, LegacyDeviceError> {
    Ok(match output {
        SerialOutput::File(path) => {
            Box::new(
                File::create(path).map_err(|source| LegacyDeviceError::SerialFile {
                    path: path.display().to_string(),
                    source,
                })?,
            )
        }
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::None => Box::new(std::io::sink()),
    })
}

impl PortIoDeviceManager {
    /// Creates the devices, places them on `pio_bus` and wires the serial IRQ.
    pub fn new(
        vm: &VmFd,
        pio_bus: &mut Bus,
        serial: &SerialOutput,
        exit: Arc<ExitSignal>,
    ) -> Result<Self, LegacyDeviceError> {
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            irqfd(vm, SERIAL_IRQ)?,
            serial_writer(serial)?,
        )));
        pio_bus.insert(serial.clone(), SERIAL_PORT, SERIAL_PORT_LEN)?;
        let i8042 = Arc::new(Mutex::new(I8042::new(exit, irqfd(vm, KEYBOARD_IRQ)?)));
        pio_bus.insert(i8042.clone(), I8042_PORT, I8042_PORT_LEN)?;
        pio_bus.insert(Arc::new(Mutex::new(PortSink)), POST_PORT, 1)?;
        Ok(Self { serial, i8042 })
    }

    /// Flushes the console output (before the process exits).
    pub fn flush(&self) {
        self.serial.lock().expect("serial poisoned").flush();
    }
}
