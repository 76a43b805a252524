//! A map keyed by [`ConnId`], stored densely by slab key: one slot per key (the generation and
//! the value), no hashing and no hash table's spare buckets. The application's per-connection
//! records live here, so an idle connection costs exactly its slot.

use super::ConnId;

pub struct ConnMap<T> {
    slots: Vec<Option<(u32, T)>>,
    len: usize,
}

impl<T> Default for ConnMap<T> {
    fn default() -> Self {
        ConnMap::new()
    }
}

impl<T> ConnMap<T> {
    /// Bytes each slab key up to the highest one in use costs here.
    pub const SLOT_BYTES: usize = std::mem::size_of::<Option<(u32, T)>>();

    pub fn new() -> ConnMap<T> {
        ConnMap {
            slots: Vec::new(),
            len: 0,
        }
    }

    /// Reserves slots for the connections `max_connections` allows, like the reactor's slab
    /// (`super::connection_slots`): address space only (pages become resident as slots are
    /// first written), so growing never copies the table and leaves the old copies' pages
    /// behind.
    pub fn for_connections(max_connections: usize) -> ConnMap<T> {
        ConnMap {
            slots: Vec::with_capacity(super::connection_slots(max_connections)),
            len: 0,
        }
    }

    fn slot(&self, id: &ConnId) -> Option<&(u32, T)> {
        self.slots
            .get(id.key as usize)?
            .as_ref()
            .filter(|(gen, _)| *gen == id.gen)
    }

    pub fn get(&self, id: &ConnId) -> Option<&T> {
        self.slot(id).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, id: &ConnId) -> Option<&mut T> {
        match self.slots.get_mut(id.key as usize)? {
            Some((gen, v)) if *gen == id.gen => Some(v),
            _ => None,
        }
    }

    pub fn contains_key(&self, id: &ConnId) -> bool {
        self.slot(id).is_some()
    }

    /// Sets the value of `id`; returns the one it had. An entry of an earlier connection with
    /// the same key (which should have been removed when it closed) is dropped.
    pub fn insert(&mut self, id: ConnId, value: T) -> Option<T> {
        let key = id.key as usize;
        if key >= self.slots.len() {
            self.slots.resize_with(key + 1, || None);
        }
        let old = self.slots[key].replace((id.gen, value));
        match old {
            Some((gen, v)) if gen == id.gen => Some(v),
            Some(_) => None,
            None => {
                self.len += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, id: &ConnId) -> Option<T> {
        let slot = self.slots.get_mut(id.key as usize)?;
        if !matches!(slot, Some((gen, _)) if *gen == id.gen) {
            return None;
        }
        self.len -= 1;
        slot.take().map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &T)> {
        self.slots.iter().enumerate().filter_map(|(key, s)| {
            s.as_ref().map(|(gen, v)| {
                (
                    ConnId {
                        key: key as u32,
                        gen: *gen,
                    },
                    v,
                )
            })
        })
    }

    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|s| s.as_ref().map(|(_, v)| v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: u32, gen: u32) -> ConnId {
        ConnId { key, gen }
    }

    #[test]
    fn a_stale_generation_never_reads_the_new_occupant() {
        let mut m = ConnMap::for_connections(4);
        assert_eq!(m.insert(id(3, 1), "a"), None);
        assert_eq!(m.get(&id(3, 1)), Some(&"a"));
        assert_eq!(m.get(&id(3, 2)), None, "another generation of the key");
        assert_eq!(m.remove(&id(3, 2)), None);
        assert_eq!(m.len(), 1);
        assert_eq!(m.insert(id(3, 1), "b"), Some("a"));
        assert_eq!(m.remove(&id(3, 1)), Some("b"));
        assert!(m.is_empty() && m.get(&id(3, 1)).is_none());
        m.insert(id(0, 7), "c");
        m.insert(id(9, 1), "d");
        let all: Vec<(ConnId, &&str)> = m.iter().collect();
        assert_eq!(all, vec![(id(0, 7), &"c"), (id(9, 1), &"d")]);
        // A leftover of a closed connection is replaced, not counted twice.
        m.insert(id(9, 2), "e");
        assert_eq!(m.len(), 2);
        assert_eq!(m.values().count(), 2);
        if let Some(v) = m.get_mut(&id(9, 2)) {
            *v = "f";
        }
        assert_eq!(m.get(&id(9, 2)), Some(&"f"));
    }
}
