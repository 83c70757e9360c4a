//! The 16550 UART on 0x3f8 (vm-superio's `Serial`) as a bus device; its interrupt is an
//! eventfd registered as the irqfd of IRQ 4, its output a file, stdout or nothing.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::BusDevice;

/// An eventfd used as an interrupt line.
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The serial console of the guest.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    /// Set after the first output error (e.g. a closed stdout), which is logged once.
    output_failed: bool,
}

impl SerialDevice {
    /// A UART raising `irq` and writing the guest's output to `out`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            serial: Serial::new(EventFdTrigger(irq), out),
            output_failed: false,
        }
    }

    /// Queues bytes for the guest to read (host input); returns how many fit.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.serial.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Flushes the output writer.
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

/// Feeds host input (stdin) to the guest's serial port.
pub struct SerialInput<R: Read + std::os::unix::io::AsRawFd> {
    serial: Arc<Mutex<SerialDevice>>,
    input: R,
}

impl<R: Read + std::os::unix::io::AsRawFd> SerialInput<R> {
    pub fn new(serial: Arc<Mutex<SerialDevice>>, input: R) -> Self {
        Self { serial, input }
    }
}

impl<R: Read + std::os::unix::io::AsRawFd> MutEventSubscriber for SerialInput<R> {
    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be polled: then there is simply no input.
        if let Err(e) = ops.add(Events::new(&self.input, EventSet::IN)) {
            tracing::debug!(error = ?e, "serial: host input is not pollable; ignored");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        // The UART's receive FIFO holds 64 bytes; what does not fit is dropped.
        let mut buf = [0u8; 64];
        match self.input.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = ops.remove(events);
            }
            Ok(n) => {
                let queued = self
                    .serial
                    .lock()
                    .expect("serial poisoned")
                    .enqueue_input(&buf[..n]);
                if queued < n {
                    tracing::debug!(dropped = n - queued, "serial: receive FIFO full");
                }
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= 8 {
            data.fill(0xff);
            return;
        }
        data[0] = self.serial.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= 8 {
            return;
        }
        if let Err(e) = self.serial.write(offset as u8, data[0]) {
            if !self.output_failed {
                self.output_failed = true;
                tracing::warn!(error = ?e, "serial: cannot write guest output; dropping it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmit_goes_to_the_writer_and_input_raises_the_irq() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(*out.0.lock().unwrap(), b"hi");
        // Enable the received-data interrupt (IER bit 0), then send input.
        dev.write(1, &[1]);
        assert_eq!(dev.enqueue_input(b"x"), 1);
        assert!(irq.read().unwrap() >= 1);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b, *b"x");
    }
}
