//! Task events to containerd, published one at a time in the order they were raised, so
//! containerd sees TaskCreate before TaskStart, TaskExit before TaskDelete, and so on.

use std::sync::{Arc, Mutex};

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;
use tokio::sync::mpsc;

use super::process::{Exit, StdioPaths};

/// One task event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Create {
        id: String,
        bundle: String,
        stdio: StdioPaths,
        pid: u32,
    },
    Start {
        id: String,
        pid: u32,
    },
    ExecAdded {
        id: String,
        exec_id: String,
    },
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    Exit {
        id: String,
        exec_id: String,
        pid: u32,
        exit: Exit,
    },
    Delete {
        id: String,
        pid: u32,
        exit: Exit,
    },
    Oom {
        id: String,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
}

impl Event {
    /// containerd's topic of the event.
    pub fn topic(&self) -> &'static str {
        match self {
            Event::Create { .. } => topics::TASK_CREATE_EVENT_TOPIC,
            Event::Start { .. } => topics::TASK_START_EVENT_TOPIC,
            Event::ExecAdded { .. } => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Event::ExecStarted { .. } => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Event::Exit { .. } => topics::TASK_EXIT_EVENT_TOPIC,
            Event::Delete { .. } => topics::TASK_DELETE_EVENT_TOPIC,
            Event::Oom { .. } => topics::TASK_OOM_EVENT_TOPIC,
            Event::Paused { .. } => topics::TASK_PAUSED_EVENT_TOPIC,
            Event::Resumed { .. } => topics::TASK_RESUMED_EVENT_TOPIC,
        }
    }

    /// The protobuf message containerd expects on the topic.
    pub fn to_message(&self) -> Box<dyn MessageDyn> {
        match self.clone() {
            Event::Create {
                id,
                bundle,
                stdio,
                pid,
            } => Box::new(TaskCreate {
                container_id: id,
                bundle,
                io: Some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
            Event::Start { id, pid } => Box::new(TaskStart {
                container_id: id,
                pid,
                ..Default::default()
            }),
            Event::ExecAdded { id, exec_id } => Box::new(TaskExecAdded {
                container_id: id,
                exec_id,
                ..Default::default()
            }),
            Event::ExecStarted { id, exec_id, pid } => Box::new(TaskExecStarted {
                container_id: id,
                exec_id,
                pid,
                ..Default::default()
            }),
            Event::Exit {
                id,
                exec_id,
                pid,
                exit,
            } => Box::new(TaskExit {
                // containerd names the init process by the container id.
                id: if exec_id.is_empty() {
                    id.clone()
                } else {
                    exec_id
                },
                container_id: id,
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            }),
            Event::Delete { id, pid, exit } => Box::new(TaskDelete {
                id: id.clone(),
                container_id: id,
                pid,
                exit_status: exit.status,
                exited_at: Some(exit.timestamp()).into(),
                ..Default::default()
            }),
            Event::Oom { id } => Box::new(TaskOOM {
                container_id: id,
                ..Default::default()
            }),
            Event::Paused { id } => Box::new(TaskPaused {
                container_id: id,
                ..Default::default()
            }),
            Event::Resumed { id } => Box::new(TaskResumed {
                container_id: id,
                ..Default::default()
            }),
        }
    }
}

/// Where events go.
pub enum Sink {
    /// containerd's event service.
    Remote {
        publisher: RemotePublisher,
        namespace: String,
    },
    /// A list, for tests.
    Memory(Arc<Mutex<Vec<Event>>>),
}

/// The sending side: cheap to clone, usable from blocking threads.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<Event>,
}

impl Events {
    /// Starts the task that publishes events in order (needs a tokio runtime).
    pub fn spawn(sink: Sink) -> Events {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                match &sink {
                    Sink::Remote {
                        publisher,
                        namespace,
                    } => {
                        let ctx = containerd_shim::Context::default();
                        if let Err(e) = publisher
                            .publish(ctx, event.topic(), namespace, event.to_message())
                            .await
                        {
                            log::warn!("publishing {}: {e}", event.topic());
                        }
                    }
                    Sink::Memory(list) => {
                        list.lock().unwrap_or_else(|p| p.into_inner()).push(event)
                    }
                }
            }
        });
        Events { tx }
    }

    /// Queues an event behind every event sent before it.
    pub fn send(&self, event: Event) {
        if self.tx.send(event).is_err() {
            log::warn!("event publisher has stopped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_keep_their_order_and_topics() {
        let list = Arc::new(Mutex::new(Vec::new()));
        let events = Events::spawn(Sink::Memory(list.clone()));
        let exit = Exit::new(3);
        let sent = vec![
            Event::Create {
                id: "c".into(),
                bundle: "/b".into(),
                stdio: StdioPaths::default(),
                pid: 7,
            },
            Event::Start {
                id: "c".into(),
                pid: 7,
            },
            Event::ExecAdded {
                id: "c".into(),
                exec_id: "e".into(),
            },
            Event::ExecStarted {
                id: "c".into(),
                exec_id: "e".into(),
                pid: 8,
            },
            Event::Exit {
                id: "c".into(),
                exec_id: "".into(),
                pid: 7,
                exit: exit.clone(),
            },
            Event::Delete {
                id: "c".into(),
                pid: 7,
                exit,
            },
        ];
        // Sent from different threads one after the other, as the service does.
        for ev in sent.clone() {
            let e = events.clone();
            std::thread::spawn(move || e.send(ev)).join().unwrap();
        }
        for _ in 0..100 {
            if list.lock().unwrap().len() == sent.len() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let got = list.lock().unwrap().clone();
        assert_eq!(got, sent);
        let topics: Vec<_> = got.iter().map(Event::topic).collect();
        assert_eq!(
            topics,
            [
                "/tasks/create",
                "/tasks/start",
                "/tasks/exec-added",
                "/tasks/exec-started",
                "/tasks/exit",
                "/tasks/delete"
            ]
        );
    }

    #[test]
    fn the_init_exit_is_named_by_the_container_id() {
        let ev = Event::Exit {
            id: "c".into(),
            exec_id: "".into(),
            pid: 1,
            exit: Exit::new(0),
        };
        let msg = ev.to_message();
        let exit = msg.downcast_ref::<TaskExit>().unwrap();
        assert_eq!((exit.id.as_str(), exit.container_id.as_str()), ("c", "c"));
    }
}
