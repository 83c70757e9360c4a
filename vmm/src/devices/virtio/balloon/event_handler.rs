//! What virtio-balloon does when the event loop wakes it: a kick of any of its queues (their
//! ioeventfds) makes it serve all three.

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::error;

use super::Balloon;
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Balloon {
    fn init(&mut self, ops: &mut EventOps) {
        self.common().poll_queue_events(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        // Whichever queue was kicked, all three are served.
        self.common().take_queue_event(events.fd());
        if let Err(e) = self.process_queues() {
            error!(error = %e, "virtio-balloon: queue processing failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::balloon::{QUEUE_SIZE, REPORTINGQ};
    use crate::devices::virtio::test_utils::{guest_memory, WRITE};
    use crate::devices::virtio::IrqTrigger;
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn reporting_queue_kick_through_the_event_manager_releases_the_block() {
        let mem = guest_memory();
        let balloon = Arc::new(Mutex::new(Balloon::new().unwrap()));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        em.add_subscriber(balloon.clone());

        mem.write_slice(&[7u8; 8192], GuestAddress(0x20_0000))
            .unwrap();
        let q = MockSplitQueue::new(&mem, 16);
        q.add_desc_chains(
            &[RawDescriptor::from(Descriptor::new(
                0x20_0000, 8192, WRITE, 0,
            ))],
            0,
        )
        .unwrap();
        let mut queues = vec![
            Queue::new(QUEUE_SIZE).unwrap(),
            Queue::new(QUEUE_SIZE).unwrap(),
        ];
        queues.push(q.create_queue().unwrap());
        let irq = Arc::new(IrqTrigger::new().unwrap());
        balloon
            .lock()
            .unwrap()
            .activate(mem.clone(), irq.clone(), queues)
            .unwrap();
        balloon.lock().unwrap().queue_events()[REPORTINGQ]
            .write(1)
            .unwrap();
        em.run_with_timeout(1000).unwrap();
        assert_eq!(q.used().idx().load(), 1);
        assert_eq!(irq.irq_evt().read().unwrap(), 1);
        let b: u8 = mem.read_obj(GuestAddress(0x20_1fff)).unwrap();
        assert_eq!(b, 0);
        assert_eq!(balloon.lock().unwrap().stats().reported_bytes, 8192);
    }
}
