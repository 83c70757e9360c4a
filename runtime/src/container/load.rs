//! Finding containers again: [`Container::load`] one by id from a state root, or list the
//! states of every container in it.

use std::fs;
use std::path::Path;

use super::{Container, Error, Result};
use crate::spec;
use crate::state::State;

impl Container {
    /// Loads container `id` from `state_root`.
    pub fn load(id: &str, state_root: &Path) -> Result<Container> {
        crate::container_id::validate(id)?;
        let dir = state_root.join(id);
        if !dir.join("state.json").exists() {
            return Err(Error::NotFound(id.into()));
        }
        let state = State::load(&dir)?;
        let text = fs::read_to_string(state.bundle.join("config.json")).unwrap_or_default();
        let spec = spec::parse(&text).unwrap_or_default();
        Ok(Container {
            dir,
            state,
            spec,
            init_chan: None,
        })
    }

    /// The states of every container under `state_root`, sorted by id.
    pub fn list(state_root: &Path) -> Result<Vec<State>> {
        let mut out = Vec::new();
        let Ok(entries) = fs::read_dir(state_root) else {
            return Ok(out);
        };
        for e in entries.flatten() {
            if let Ok(s) = State::load(&e.path()) {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
