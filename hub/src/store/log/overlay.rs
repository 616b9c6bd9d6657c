//! The log's tail in memory: every change committed to the log since the last checkpoint, kept
//! so that reads see it before it is folded into the indexed engine.
//!
//! The tail is a short stack of immutable layers, oldest first, each the sorted entries
//! `(table, key) -> Some(value)` or `None` (a delete), packed in one buffer. A commit pushes a
//! layer; layers of similar size are merged (like a binary counter), so there are O(log n) of
//! them and each change is copied O(log n) times. A reader's view is a clone of the stack (a few
//! `Arc`s): it never blocks the writer and never sees a later commit.
//!
//! Invariants: a newer layer wins over an older one for the same key; the bytes counted are what
//! every layer's buffers hold, and the log bounds them (see `super::LogConfig::checkpoint_bytes`).

use std::ops::{Bound, ControlFlow};
use std::sync::Arc;

use super::super::EngineError;
use super::super::engine::{Change, ChangeSink, Direction, KeyRange, Table, Visitor, WriteBatch};

/// An entry's header in a layer's bytes: its table, its key's length, its value's length
/// ([`DELETED`] for a delete).
const HEADER: usize = 9;
/// The value length of a delete.
const DELETED: u32 = u32::MAX;

/// One commit's changes, or several merged: entries sorted by table and key, packed one after
/// another in one buffer (header, key, value) with the start of each in `index`. Packed, an
/// entry takes its own bytes and 17 more; as a map of vectors it took about three times its
/// bytes, and the tail's memory is what bounds how much a checkpoint folds at once.
#[derive(Debug, Default)]
pub struct Layer {
    data: Vec<u8>,
    index: Vec<usize>,
}

/// An entry: its table (`Table as u8`, which orders as `Table` does), key and value (`None`:
/// deleted).
type Entry<'a> = (u8, &'a [u8], Option<&'a [u8]>);

impl Layer {
    /// The changes of `batch`, later ones winning.
    pub fn of(batch: &WriteBatch) -> Self {
        let mut changes: Vec<Entry<'_>> = batch
            .changes()
            .iter()
            .map(|change| match change {
                Change::Put { table, key, value } => {
                    (*table as u8, key.as_slice(), Some(value.as_slice()))
                }
                Change::Delete { table, key } => (*table as u8, key.as_slice(), None),
            })
            .collect();
        // Stable: changes of one key keep their order, and the last of them is kept.
        changes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let kept = |i: usize| {
            changes
                .get(i + 1)
                .is_none_or(|next| (next.0, next.1) != (changes[i].0, changes[i].1))
        };
        let bytes: usize = (0..changes.len())
            .filter(|&i| kept(i))
            .map(|i| HEADER + changes[i].1.len() + changes[i].2.map_or(0, <[u8]>::len))
            .sum();
        let mut layer = Layer {
            data: Vec::with_capacity(bytes),
            index: Vec::with_capacity(changes.len()),
        };
        for (i, change) in changes.iter().enumerate() {
            if kept(i) {
                layer.push(*change);
            }
        }
        layer.index.shrink_to_fit();
        layer
    }

    /// `older` and `newer` as one layer, `newer` winning on a key both hold.
    fn merged(older: &Layer, newer: &Layer) -> Self {
        let mut layer = Layer {
            data: Vec::with_capacity(older.data.len() + newer.data.len()),
            index: Vec::with_capacity(older.len() + newer.len()),
        };
        let (mut i, mut j) = (0, 0);
        while i < older.len() || j < newer.len() {
            let next = match (i < older.len(), j < newer.len()) {
                (true, true) => {
                    let (a, b) = (older.entry(i), newer.entry(j));
                    match (a.0, a.1).cmp(&(b.0, b.1)) {
                        std::cmp::Ordering::Less => {
                            i += 1;
                            a
                        }
                        std::cmp::Ordering::Greater => {
                            j += 1;
                            b
                        }
                        std::cmp::Ordering::Equal => {
                            i += 1;
                            j += 1;
                            b
                        }
                    }
                }
                (true, false) => {
                    i += 1;
                    older.entry(i - 1)
                }
                _ => {
                    j += 1;
                    newer.entry(j - 1)
                }
            };
            layer.push(next);
        }
        // Keys both held were written once: give back what was reserved for them.
        if layer.data.capacity() - layer.data.len() > layer.data.len() / 8 {
            layer.data.shrink_to_fit();
            layer.index.shrink_to_fit();
        }
        layer
    }

    fn push(&mut self, (table, key, value): Entry<'_>) {
        self.index.push(self.data.len());
        self.data.push(table);
        self.data
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        let value_len = value.map_or(DELETED, |v| v.len() as u32);
        self.data.extend_from_slice(&value_len.to_le_bytes());
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value.unwrap_or_default());
    }

    fn entry(&self, i: usize) -> Entry<'_> {
        self.entry_at(self.index[i])
    }

    /// The entry whose header starts at byte `start`.
    fn entry_at(&self, start: usize) -> Entry<'_> {
        let d = &self.data[start..];
        let len = |at: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&d[at..at + 4]);
            u32::from_le_bytes(b)
        };
        let (key_len, value_len) = (len(1) as usize, len(5));
        let key = &d[HEADER..HEADER + key_len];
        let value = (value_len != DELETED)
            .then(|| &d[HEADER + key_len..HEADER + key_len + value_len as usize]);
        (d[0], key, value)
    }

    /// The place of the first entry after (`table`, `key`), or at it when `at_too`.
    fn position(&self, table: u8, key: &[u8], at_too: bool) -> usize {
        self.index.partition_point(|&start| {
            let (t, k, _) = self.entry_at(start);
            match (t, k).cmp(&(table, key)) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal => !at_too,
                std::cmp::Ordering::Greater => false,
            }
        })
    }

    /// The places `[lo, hi)` of the entries of `range` in `table`.
    fn span(&self, table: u8, range: &KeyRange) -> (usize, usize) {
        let lo = match &range.start {
            Bound::Included(k) => self.position(table, k, true),
            Bound::Excluded(k) => self.position(table, k, false),
            Bound::Unbounded => self.position(table, &[], true),
        };
        let hi = match &range.end {
            Bound::Included(k) => self.position(table, k, false),
            Bound::Excluded(k) => self.position(table, k, true),
            Bound::Unbounded => match table.checked_add(1) {
                Some(next) => self.position(next, &[], true),
                None => self.len(),
            },
        };
        (lo, hi.max(lo))
    }

    /// This layer's word on `key`: `Some(Some(v))` a value, `Some(None)` deleted.
    fn get(&self, table: u8, key: &[u8]) -> Option<Option<&[u8]>> {
        let i = self.position(table, key, true);
        (i < self.len())
            .then(|| self.entry(i))
            .filter(|(t, k, _)| (*t, *k) == (table, key))
            .map(|(_, _, v)| v)
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// The memory the layer holds.
    fn bytes(&self) -> usize {
        self.data.capacity() + self.index.capacity() * std::mem::size_of::<usize>()
    }
}

/// The stack of layers; cheap to clone (a reader's view).
#[derive(Debug, Clone)]
pub struct Tail {
    layers: Vec<Arc<Layer>>,
    /// Twice the largest layer a merge may make (see [`Tail::limited`]).
    merge_limit: usize,
}

impl Default for Tail {
    fn default() -> Self {
        Tail::limited(usize::MAX)
    }
}

impl Tail {
    /// An empty tail that never merges two layers into one of over half `bytes`: the log
    /// checkpoints the tail at that size, and the checkpoint folds the layers however many they
    /// are, while a merge holds its layers' bytes twice until it is done (measured with 1000
    /// devices flat out: 4.5 MB of a 28 MB heap peak was the tail's last merge before a
    /// checkpoint). Only the largest merges are skipped, so what repeats across layers (device
    /// records, latest values, rollups) does not fill the tail early: skipping every merge of
    /// over an eighth that would take the tail past `bytes` wrote 48.0 bytes a reading with 100
    /// devices flat out, against 41.2 merging all and 42.9 with this rule (one run each).
    pub fn limited(bytes: usize) -> Self {
        Tail {
            layers: Vec::new(),
            merge_limit: bytes,
        }
    }

    /// Pushes a commit's layer and merges layers of similar size.
    pub fn push(&mut self, layer: Layer) {
        if layer.len() == 0 {
            return;
        }
        self.layers.push(Arc::new(layer));
        while self.layers.len() >= 2 {
            let n = self.layers.len();
            if self.layers[n - 2].len() > 2 * self.layers[n - 1].len() {
                break;
            }
            let merged = self.layers[n - 2].bytes() + self.layers[n - 1].bytes();
            if merged > self.merge_limit / 2 {
                break;
            }
            let (Some(newer), Some(older)) = (self.layers.pop(), self.layers.pop()) else {
                break;
            };
            self.layers.push(Arc::new(Layer::merged(&older, &newer)));
        }
    }

    /// Bytes the tail holds.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|l| l.bytes()).sum()
    }

    /// Whether the tail holds nothing.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// Gives `sink` every change of the tail in key order, the newest value per key: what a
    /// checkpoint writes.
    pub fn feed(&self, sink: &mut ChangeSink<'_>) -> Result<(), EngineError> {
        for table in Table::ALL {
            let mut merge = Merge::new(&self.layers, table, &KeyRange::all(), Direction::Forward);
            while let Some((key, value)) = merge.peek() {
                sink(table, key, value)?;
                merge.advance();
            }
        }
        Ok(())
    }

    /// The values the tail puts in `table`, in key order (its deletes left out), borrowed from it.
    pub fn puts(&self, table: Table) -> Vec<(&[u8], &[u8])> {
        let mut merge = Merge::new(&self.layers, table, &KeyRange::all(), Direction::Forward);
        let mut puts = Vec::new();
        while let Some((key, value)) = merge.peek() {
            if let Some(value) = value {
                puts.push((key, value));
            }
            merge.advance();
        }
        puts
    }

    /// Every change of the tail as one batch (see [`Tail::feed`]).
    #[cfg(test)]
    pub fn to_batch(&self) -> WriteBatch {
        let mut batch = WriteBatch::new();
        let fed = self.feed(&mut |table, key, value| {
            match value {
                Some(v) => batch.put(table, key.to_vec(), v.to_vec()),
                None => batch.delete(table, key.to_vec()),
            }
            Ok(())
        });
        debug_assert!(fed.is_ok(), "this sink never fails");
        batch
    }

    /// The tail's word on `key`: `Some(Some(v))` a value, `Some(None)` deleted, `None` untouched.
    pub fn get(&self, table: Table, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.layers
            .iter()
            .rev()
            .find_map(|layer| layer.get(table as u8, key))
            .map(|value| value.map(<[u8]>::to_vec))
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
        under: impl FnOnce(&mut Visitor<'_>) -> Result<(), EngineError>,
    ) -> Result<(), EngineError> {
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
                mine.advance();
                if let Some(value) = mv
                    && visit(mk, value).is_break()
                {
                    stopped = true;
                    return ControlFlow::Break(());
                }
            }
            if let Some((mk, mv)) = mine.peek()
                && mk == k
            {
                // The tail's change of this key replaces the engine's entry.
                mine.advance();
                if let Some(value) = mv
                    && visit(k, value).is_break()
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
            mine.advance();
            if let Some(value) = mv
                && visit(mk, value).is_break()
            {
                break;
            }
        }
        Ok(())
    }
}

/// A k-way merge of the layers' entries in a key range, newest layer winning on equal keys.
struct Merge<'a> {
    /// Oldest layer first; each with the places `[lo, hi)` of its entries not yet taken.
    sources: Vec<(&'a Layer, usize, usize)>,
    direction: Direction,
    /// The index of the source holding the next entry.
    next: Option<usize>,
}

impl<'a> Merge<'a> {
    fn new(layers: &'a [Arc<Layer>], table: Table, range: &KeyRange, direction: Direction) -> Self {
        let sources = layers
            .iter()
            .map(|layer| {
                let (lo, hi) = layer.span(table as u8, range);
                (&**layer, lo, hi)
            })
            .collect();
        let mut merge = Merge {
            sources,
            direction,
            next: None,
        };
        merge.choose();
        merge
    }

    /// A source's next entry, if it has one left.
    fn current(&self, source: usize) -> Option<Entry<'a>> {
        let (layer, lo, hi) = *self.sources.get(source)?;
        (lo < hi).then(|| match self.direction {
            Direction::Forward => layer.entry(lo),
            Direction::Reverse => layer.entry(hi - 1),
        })
    }

    /// A source's next key, if it has one left.
    fn head(&self, source: usize) -> Option<&'a [u8]> {
        self.current(source).map(|(_, key, _)| key)
    }

    /// Finds the source with the next key; on equal keys the newest (last) source.
    fn choose(&mut self) {
        let mut best: Option<(usize, &[u8])> = None;
        for i in 0..self.sources.len() {
            if let Some(k) = self.head(i) {
                let better = match best {
                    None => true,
                    Some((_, b)) => match self.direction {
                        Direction::Forward => k <= b,
                        Direction::Reverse => k >= b,
                    },
                };
                if better {
                    best = Some((i, k));
                }
            }
        }
        self.next = best.map(|(i, _)| i);
    }

    fn peek(&self) -> Option<(&'a [u8], Option<&'a [u8]>)> {
        let (_, key, value) = self.current(self.next?)?;
        Some((key, value))
    }

    /// Moves past the current key in every source that holds it.
    fn advance(&mut self) {
        let Some(key) = self.next.and_then(|i| self.head(i)) else {
            return;
        };
        for i in 0..self.sources.len() {
            if self.head(i) == Some(key) {
                let source = &mut self.sources[i];
                match self.direction {
                    Direction::Forward => source.1 += 1,
                    Direction::Reverse => source.2 -= 1,
                }
            }
        }
        self.choose();
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
        scan_table(tail, Table::Readings, under, range, d)
    }

    fn scan_table(
        tail: &Tail,
        table: Table,
        under: &[(&[u8], &[u8])],
        range: KeyRange,
        d: Direction,
    ) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let under: Vec<(Vec<u8>, Vec<u8>)> = under
            .iter()
            .filter(|(k, _)| range.contains(k))
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        tail.scan_over(
            table,
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
        let entry = HEADER + 2 + std::mem::size_of::<usize>();
        let bytes = tail.bytes();
        assert!(
            (7 * entry..=7 * entry * tail.layers.len() * 2).contains(&bytes),
            "{bytes}"
        );
        assert_eq!(tail.to_batch().changes().len(), 7);
    }

    #[test]
    fn a_limited_tail_never_merges_into_a_layer_over_half_its_limit() {
        let limit = 64 << 10;
        let (mut limited, mut unlimited) = (Tail::limited(limit), Tail::default());
        let value = [7u8; 240];
        for n in 0..256u32 {
            // Distinct keys: a merge keeps every entry, as readings do.
            let key = n.to_be_bytes();
            let layer = || Layer::of(&batch(&[(&key, Some(&value))]));
            for tail in [&mut limited, &mut unlimited] {
                tail.push(layer());
            }
        }
        let largest = |tail: &Tail| tail.layers.iter().map(|l| l.bytes()).max().unwrap();
        // Unlimited, merges made a layer of most of the tail, while the two it merged were still
        // held: nearly twice the tail's bytes for a moment.
        assert!(largest(&unlimited) > limit / 2, "{}", largest(&unlimited));
        let largest = largest(&limited);
        // No merge made a layer of over half the limit.
        assert!(largest <= limit / 2, "largest layer {largest} bytes");
        for n in 0..256u32 {
            let key = n.to_be_bytes();
            assert_eq!(
                limited.get(Table::Readings, &key),
                Some(Some(value.to_vec()))
            );
        }
        assert_eq!(limited.to_batch().changes().len(), 256);
    }

    proptest::proptest! {
        /// The tail over an engine's entries reads as a map that took every change in order.
        #[test]
        fn the_tail_reads_as_a_map_that_took_every_change(
            batches in proptest::collection::vec(
                proptest::collection::vec((0u8..3, 0u8..12, proptest::option::of(0u8..50)), 0..8),
                0..24,
            ),
            under in proptest::collection::btree_map((0u8..3, 0u8..12), 0u8..50, 0..20),
            lo in 0u8..13,
            hi in 0u8..13,
            limit in proptest::option::of(0usize..600),
        ) {
            let tables = [Table::Meta, Table::Readings, Table::Latest];
            let mut model: std::collections::BTreeMap<(u8, u8), u8> = under.clone();
            // A limit this small leaves layers unmerged: the reads must not tell.
            let mut tail = limit.map_or_else(Tail::default, Tail::limited);
            for changes in &batches {
                let mut b = WriteBatch::new();
                for &(t, k, v) in changes {
                    match v {
                        Some(v) => {
                            b.put(tables[t as usize], vec![k], vec![v]);
                            model.insert((t, k), v);
                        }
                        None => {
                            b.delete(tables[t as usize], vec![k]);
                            model.remove(&(t, k));
                        }
                    }
                }
                tail.push(Layer::of(&b));
            }
            for (t, table) in tables.iter().enumerate() {
                let t = t as u8;
                for k in 0..12u8 {
                    let seen = match tail.get(*table, &[k]) {
                        Some(v) => v.map(|v| v[0]),
                        None => under.get(&(t, k)).copied(),
                    };
                    proptest::prop_assert_eq!(seen, model.get(&(t, k)).copied());
                }
                let range = KeyRange::between(vec![lo], vec![hi]);
                let expected: Vec<Vec<u8>> = model
                    .range((t, lo)..(t, hi.max(lo)))
                    .map(|(&(_, k), &v)| vec![k, b'=', v])
                    .collect();
                let keys: Vec<[u8; 2]> = under
                    .iter()
                    .filter(|((ut, _), _)| *ut == t)
                    .map(|(&(_, k), &v)| [k, v])
                    .collect();
                let under_entries: Vec<(&[u8], &[u8])> =
                    keys.iter().map(|kv| (&kv[..1], &kv[1..])).collect();
                for direction in [Direction::Forward, Direction::Reverse] {
                    let mut out =
                        scan_table(&tail, *table, &under_entries, range.clone(), direction);
                    if direction == Direction::Reverse {
                        out.reverse();
                    }
                    proptest::prop_assert_eq!(&out, &expected);
                }
            }
            // The checkpoint's batch is the tail's last word on each key it touched.
            let batch = tail.to_batch();
            for change in batch.changes() {
                let (table, key, value) = match change {
                    Change::Put { table, key, value } => (*table, key, Some(value[0])),
                    Change::Delete { table, key } => (*table, key, None),
                };
                let t = tables.iter().position(|x| *x == table).unwrap() as u8;
                proptest::prop_assert_eq!(value, model.get(&(t, key[0])).copied());
            }
        }
    }
}
