//! The i8042 keyboard controller at 0x60-0x64, reduced to what a VMM needs: the 0xFE
//! command on port 0x64 resets the CPU (Linux `reboot=k`), and Ctrl-Alt-Del can be injected.

use std::collections::VecDeque;
use std::sync::Arc;

use vm_superio::{I8042Device, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;
use crate::vstate::{ExitReason, ExitSignal};

/// Offsets from 0x60.
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;
/// Status register: output buffer full.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Ctrl, Alt, Del pressed then released, in scan code set 1 (what the driver sees with the
/// controller's translation on).
const CTRL_ALT_DEL: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// Turns the controller's reset line into a clean VM exit.
pub struct ResetTrigger(Arc<ExitSignal>);

impl Trigger for ResetTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::GuestReset);
        Ok(())
    }
}

/// The i8042 controller; inserted on the port bus at 0x60 with length 5.
pub struct I8042 {
    dev: I8042Device<ResetTrigger>,
    /// Keyboard bytes waiting for the guest on port 0x60.
    output: VecDeque<u8>,
    /// IRQ 1, raised for each byte made available.
    kbd_irq: EventFd,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>, kbd_irq: EventFd) -> Self {
        Self {
            dev: I8042Device::new(ResetTrigger(exit)),
            output: VecDeque::new(),
            kbd_irq,
        }
    }

    fn raise_irq(&self) {
        if let Err(e) = self.kbd_irq.write(1) {
            tracing::warn!(error = %e, "i8042: cannot raise IRQ 1");
        }
    }

    /// Queues the Ctrl-Alt-Del key sequence and raises the keyboard interrupt.
    pub fn inject_ctrl_alt_del(&mut self) {
        self.output.extend(CTRL_ALT_DEL);
        self.raise_irq();
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => {
                let byte = self.output.pop_front().unwrap_or(0);
                if !self.output.is_empty() {
                    self.raise_irq();
                }
                byte
            }
            // Input buffer always empty, so `kb_wait` returns at once.
            COMMAND_OFFSET if !self.output.is_empty() => STATUS_OUTPUT_FULL,
            _ => self.dev.read(offset as u8),
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let [value] = data {
            let _ = self.dev.write(offset as u8, *value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, Arc<ExitSignal>, EventFd) {
        let exit = Arc::new(ExitSignal::new().unwrap());
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            I8042::new(exit.clone(), irq.try_clone().unwrap()),
            exit,
            irq,
        )
    }

    #[test]
    fn reset_command_on_port_0x64_requests_a_clean_exit() {
        let (mut dev, exit, _) = device();
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xaa]);
        assert!(!exit.is_requested());
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status, [0]);
        dev.write(4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::GuestReset));
    }

    #[test]
    fn ctrl_alt_del_is_readable_from_the_data_port() {
        let (mut dev, _, irq) = device();
        dev.inject_ctrl_alt_del();
        assert_eq!(irq.read().unwrap(), 1);
        let mut got = Vec::new();
        let mut b = [0u8];
        loop {
            dev.read(4, &mut b);
            if b[0] & STATUS_OUTPUT_FULL == 0 {
                break;
            }
            dev.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, CTRL_ALT_DEL);
    }
}
