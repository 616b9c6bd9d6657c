//! The log's tail in memory: every change committed to the log since the last checkpoint, kept
//! so that reads see it before it is folded into the indexed engine.
//!
//! The tail is a short stack of immutable layers, oldest first, each a sorted map of
//! `(table, key) -> Some(value)` or `None` (a delete). A commit pushes a layer; layers of similar
//! size are merged (like a binary counter), so there are O(log n) of them and each change is
//! copied O(log n) times. A reader's view is a clone of the stack (a few `Arc`s): it never blocks
//! the writer and never sees a later commit.
//!
//! Invariants: a newer layer wins over an older one for the same key; the bytes counted are those
//! of every layer's keys and values plus a fixed overhead per entry, and the log bounds them (see
//! `super::LogConfig::checkpoint_bytes`).

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use super::super::engine::{Change, Direction, KeyRange, Table, Visitor, WriteBatch};

/// Memory counted per entry beyond its key and value: the map's node share and two vectors.
const ENTRY_OVERHEAD_BYTES: usize = 80;

type Key = (Table, Vec<u8>);

/// One commit's changes, or several merged.
#[derive(Debug, Default)]
pub struct Layer {
    entries: BTreeMap<Key, Option<Vec<u8>>>,
    bytes: usize,
}

impl Layer {
    /// The changes of `batch`, later ones winning.
    pub fn of(batch: &WriteBatch) -> Self {
        let mut layer = Layer::default();
        for change in batch.changes() {
            match change {
                Change::Put { table, key, value } => {
                    layer.insert((*table, key.clone()), Some(value.clone()))
                }
                Change::Delete { table, key } => layer.insert((*table, key.clone()), None),
            }
        }
        layer
    }

    fn insert(&mut self, key: Key, value: Option<Vec<u8>>) {
        let added = key.1.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD_BYTES;
        if let Some(old) = self.entries.insert(key.clone(), value) {
            self.bytes -= key.1.len() + old.map_or(0, |v| v.len()) + ENTRY_OVERHEAD_BYTES;
        }
        self.bytes += added;
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The stack of layers; cheap to clone (a reader's view).
#[derive(Debug, Clone, Default)]
pub struct Tail {
    layers: Vec<Arc<Layer>>,
}

impl Tail {
    /// Pushes a commit's layer and merges layers of similar size.
    pub fn push(&mut self, layer: Layer) {
        if layer.entries.is_empty() {
            return;
        }
        self.layers.push(Arc::new(layer));
        while self.layers.len() >= 2 {
            let n = self.layers.len();
            if self.layers[n - 2].len() > 2 * self.layers[n - 1].len() {
                break;
            }
            let (Some(newer), Some(older)) = (self.layers.pop(), self.layers.pop()) else {
                break;
            };
            let mut merged = Layer {
                entries: older.entries.clone(),
                bytes: older.bytes,
            };
            for (k, v) in &newer.entries {
                merged.insert(k.clone(), v.clone());
            }
            self.layers.push(Arc::new(merged));
        }
    }

    /// Bytes the tail holds (an estimate, see the module doc).
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes).sum()
    }

    /// Whether the tail holds nothing.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Every change of the tail as one batch, newest value per key: what a checkpoint writes.
    pub fn to_batch(&self) -> WriteBatch {
        let mut merged: BTreeMap<&Key, &Option<Vec<u8>>> = BTreeMap::new();
        for layer in &self.layers {
            for (k, v) in &layer.entries {
                merged.insert(k, v);
            }
        }
        let mut batch = WriteBatch::new();
        for ((table, key), value) in merged {
            match value {
                Some(v) => batch.put(*table, key.clone(), v.clone()),
                None => batch.delete(*table, key.clone()),
            }
        }
        batch
    }

    /// The tail's word on `key`: `Some(Some(v))` a value, `Some(None)` deleted, `None` untouched.
    pub fn get(&self, table: Table, key: &[u8]) -> Option<Option<Vec<u8>>> {
        let key = (table, key.to_vec());
        self.layers
            .iter()
            .rev()
            .find_map(|layer| layer.entries.get(&key))
            .cloned()
    }

    /// Visits the entries of `range` in `direction` order, the tail's changes laid over the
    /// engine's own scan `under` (which feeds its entries to the visitor it is given), until
    /// `visit` breaks.
    pub fn scan_over(
        &self,
        table: Table,
        range: &KeyRange,
        direction: Direction,
        visit: &mut Visitor<'_>,
        under: impl FnOnce(&mut Visitor<'_>) -> Result<(), super::super::EngineError>,
    ) -> Result<(), super::super::EngineError> {
        let mut mine = Merge::new(&self.layers, table, range, direction);
        let mut stopped = false;
        // Whether `a` comes before `b` in the scan's order.
        let before = |a: &[u8], b: &[u8]| match direction {
            Direction::Forward => a < b,
            Direction::Reverse => a > b,
        };
        under(&mut |k: &[u8], v: &[u8]| {
            while let Some((mk, mv)) = mine.peek() {
                if !before(mk, k) {
                    break;
                }
                let (mk, mv) = (mk.to_vec(), mv.cloned());
                mine.advance();
                if let Some(value) = mv
                    && visit(&mk, &value).is_break()
                {
                    stopped = true;
                    return ControlFlow::Break(());
                }
            }
            if let Some((mk, mv)) = mine.peek()
                && mk == k
            {
                // The tail's change of this key replaces the engine's entry.
                let mv = mv.cloned();
                mine.advance();
                if let Some(value) = mv
                    && visit(k, &value).is_break()
                {
                    stopped = true;
                    return ControlFlow::Break(());
                }
                return ControlFlow::Continue(());
            }
            if visit(k, v).is_break() {
                stopped = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        if stopped {
            return Ok(());
        }
        while let Some((mk, mv)) = mine.peek() {
            let (mk, mv) = (mk.to_vec(), mv.cloned());
            mine.advance();
            if let Some(value) = mv
                && visit(&mk, &value).is_break()
            {
                break;
            }
        }
        Ok(())
    }
}

type Range<'a> = std::collections::btree_map::Range<'a, Key, Option<Vec<u8>>>;
/// A layer's next entry in a scan.
type Head<'a> = Option<(&'a Key, &'a Option<Vec<u8>>)>;

/// A k-way merge of the layers' entries in a key range, newest layer winning on equal keys.
struct Merge<'a> {
    /// Oldest layer first; each with its next entry.
    sources: Vec<(Range<'a>, Head<'a>)>,
    direction: Direction,
    /// The index of the source holding the next entry.
    next: Option<usize>,
}

impl<'a> Merge<'a> {
    fn new(layers: &'a [Arc<Layer>], table: Table, range: &KeyRange, direction: Direction) -> Self {
        let bounds = map_bounds(table, range);
        let mut sources = Vec::with_capacity(layers.len());
        if let Some((lo, hi)) = bounds {
            for layer in layers {
                let mut iter = layer.entries.range((lo.clone(), hi.clone()));
                let head = match direction {
                    Direction::Forward => iter.next(),
                    Direction::Reverse => iter.next_back(),
                };
                sources.push((iter, head));
            }
        }
        let mut merge = Merge {
            sources,
            direction,
            next: None,
        };
        merge.choose();
        merge
    }

    /// Finds the source with the next key; on equal keys the newest (last) source.
    fn choose(&mut self) {
        let mut best: Option<(usize, &Key)> = None;
        for (i, (_, head)) in self.sources.iter().enumerate() {
            if let Some((k, _)) = head {
                let better = match best {
                    None => true,
                    Some((_, b)) => match self.direction {
                        Direction::Forward => *k <= b,
                        Direction::Reverse => *k >= b,
                    },
                };
                if better {
                    best = Some((i, k));
                }
            }
        }
        self.next = best.map(|(i, _)| i);
    }

    fn peek(&self) -> Option<(&'a [u8], Option<&'a Vec<u8>>)> {
        let i = self.next?;
        let (k, v) = self.sources.get(i)?.1?;
        Some((k.1.as_slice(), v.as_ref()))
    }

    /// Moves past the current key in every source that holds it.
    fn advance(&mut self) {
        let Some(i) = self.next else { return };
        let Some((key, _)) = self.sources.get(i).and_then(|s| s.1) else {
            return;
        };
        let direction = self.direction;
        for (iter, head) in &mut self.sources {
            if head.is_some_and(|(k, _)| k == key) {
                *head = match direction {
                    Direction::Forward => iter.next(),
                    Direction::Reverse => iter.next_back(),
                };
            }
        }
        self.choose();
    }
}

/// The bounds of `range` in `table` as map bounds, or `None` when the range is empty (a map's
/// `range` would panic on it).
fn map_bounds(table: Table, range: &KeyRange) -> Option<(Bound<Key>, Bound<Key>)> {
    let lo = match &range.start {
        Bound::Included(k) => Bound::Included((table, k.clone())),
        Bound::Excluded(k) => Bound::Excluded((table, k.clone())),
        Bound::Unbounded => Bound::Included((table, Vec::new())),
    };
    let hi = match &range.end {
        Bound::Included(k) => Bound::Included((table, k.clone())),
        Bound::Excluded(k) => Bound::Excluded((table, k.clone())),
        Bound::Unbounded => match Table::ALL.iter().find(|t| **t > table) {
            Some(next) => Bound::Excluded((*next, Vec::new())),
            None => Bound::Unbounded,
        },
    };
    let (lo_key, lo_in) = match &lo {
        Bound::Included(k) => (k, true),
        Bound::Excluded(k) => (k, false),
        Bound::Unbounded => return Some((lo, hi)),
    };
    match &hi {
        Bound::Included(k) if lo_key > k || (lo_key == k && !lo_in) => None,
        Bound::Excluded(k) if lo_key >= k => None,
        _ => Some((lo, hi)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(changes: &[(&[u8], Option<&[u8]>)]) -> WriteBatch {
        let mut b = WriteBatch::new();
        for (k, v) in changes {
            match v {
                Some(v) => b.put(Table::Readings, k.to_vec(), v.to_vec()),
                None => b.delete(Table::Readings, k.to_vec()),
            }
        }
        b
    }

    fn scan(tail: &Tail, under: &[(&[u8], &[u8])], range: KeyRange, d: Direction) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let under: Vec<(Vec<u8>, Vec<u8>)> = under
            .iter()
            .filter(|(k, _)| range.contains(k))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        tail.scan_over(
            Table::Readings,
            &range,
            d,
            &mut |k, v| {
                out.push([k, b"=", v].concat());
                ControlFlow::Continue(())
            },
            |visit| {
                let entries: Vec<_> = match d {
                    Direction::Forward => under.iter().collect(),
                    Direction::Reverse => under.iter().rev().collect(),
                };
                for (k, v) in entries {
                    if visit(k, v).is_break() {
                        break;
                    }
                }
                Ok(())
            },
        )
        .unwrap();
        out
    }

    #[test]
    fn newer_layers_win_deletes_hide_and_scans_merge_both_ways() {
        let mut tail = Tail::default();
        tail.push(Layer::of(&batch(&[(b"b", Some(b"1")), (b"d", Some(b"1"))])));
        tail.push(Layer::of(&batch(&[(b"b", Some(b"2")), (b"c", None)])));
        tail.push(Layer::of(&batch(&[(b"e", Some(b"3"))])));
        let under: &[(&[u8], &[u8])] = &[(b"a", b"0"), (b"c", b"0"), (b"d", b"0"), (b"f", b"0")];
        let forward = scan(&tail, under, KeyRange::all(), Direction::Forward);
        assert_eq!(
            forward,
            vec![
                b"a=0".to_vec(),
                b"b=2".to_vec(),
                b"d=1".to_vec(),
                b"e=3".to_vec(),
                b"f=0".to_vec()
            ]
        );
        let mut reverse = scan(&tail, under, KeyRange::all(), Direction::Reverse);
        reverse.reverse();
        assert_eq!(reverse, forward);
        let some = scan(
            &tail,
            under,
            KeyRange::between(b"b".to_vec(), b"e".to_vec()),
            Direction::Forward,
        );
        assert_eq!(some, vec![b"b=2".to_vec(), b"d=1".to_vec()]);
        assert_eq!(tail.get(Table::Readings, b"c"), Some(None));
        assert_eq!(tail.get(Table::Readings, b"b"), Some(Some(b"2".to_vec())));
        assert_eq!(tail.get(Table::Meta, b"b"), None);
        let empty = scan(
            &tail,
            under,
            KeyRange::between(b"e".to_vec(), b"b".to_vec()),
            Direction::Forward,
        );
        assert!(empty.is_empty());
    }

    #[test]
    fn merging_keeps_the_newest_value_and_counts_each_layer_s_bytes() {
        let mut tail = Tail::default();
        for i in 0..100u8 {
            tail.push(Layer::of(&batch(&[(&[i % 7], Some(&[i]))])));
        }
        assert!(tail.layers.len() <= 8, "{} layers", tail.layers.len());
        for k in 0..7u8 {
            let last = (0..100u8).filter(|i| i % 7 == k).max().unwrap();
            assert_eq!(tail.get(Table::Readings, &[k]), Some(Some(vec![last])));
        }
        // A key in two layers takes memory twice and is counted twice, never more.
        let entry = 2 + ENTRY_OVERHEAD_BYTES;
        assert!((7 * entry..=7 * entry * tail.layers.len()).contains(&tail.bytes()));
        assert_eq!(tail.to_batch().changes().len(), 7);
    }
}
