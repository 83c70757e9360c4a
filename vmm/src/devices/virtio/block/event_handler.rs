//! What virtio-blk does when the event loop wakes it: a kick of the request queue
//! (its ioeventfd) makes it serve every pending request.

use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::error;

use super::Block;
use crate::devices::virtio::VirtioDevice;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.common().poll_queue_events(ops);
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if self.common().take_queue_event(events.fd()).is_none() {
            return;
        }
        if let Err(e) = self.process_queue() {
            error!(path = %self.path().display(), error = %e, "virtio-blk: queue processing failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, NEXT, WRITE};
    use crate::devices::virtio::IrqTrigger;
    use event_manager::{EventManager, SubscriberOps};
    use std::sync::{Arc, Mutex};
    use virtio_bindings::virtio_blk::VIRTIO_BLK_T_GET_ID;
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn queue_kick_through_the_event_manager_serves_requests() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(4096).unwrap();
        let mem = guest_memory();
        let block = Arc::new(Mutex::new(Block::new(file.path(), false).unwrap()));
        let mut em: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
            EventManager::new().unwrap();
        em.add_subscriber(block.clone());

        let q = MockSplitQueue::new(&mem, 16);
        // A GET_ID request: header, 20-byte buffer, status.
        mem.write_obj(VIRTIO_BLK_T_GET_ID, GuestAddress(0x10_0000))
            .unwrap();
        q.add_desc_chains(
            &[
                RawDescriptor::from(Descriptor::new(0x10_0000, 16, NEXT, 1)),
                RawDescriptor::from(Descriptor::new(0x20_0000, 20, WRITE | NEXT, 2)),
                RawDescriptor::from(Descriptor::new(0x30_0000, 1, WRITE, 0)),
            ],
            0,
        )
        .unwrap();
        let queue: Queue = q.create_queue().unwrap();
        let irq = Arc::new(IrqTrigger::new().unwrap());
        block
            .lock()
            .unwrap()
            .activate(mem.clone(), irq.clone(), vec![queue])
            .unwrap();
        block.lock().unwrap().queue_events()[0].write(1).unwrap();
        em.run_with_timeout(1000).unwrap();
        assert_eq!(q.used().idx().load(), 1);
        assert_eq!(irq.irq_evt().read().unwrap(), 1);
    }
}
