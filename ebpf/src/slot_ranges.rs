//! Which ranges of the `lb4_slots` array are free: each frontend owns one
//! contiguous range, found first-fit; freed ranges merge with their
//! neighbours.

use std::collections::BTreeMap;

/// Free ranges of an array of slots.
#[derive(Debug, Clone)]
pub(crate) struct SlotRanges {
    /// Start of each free range -> its length; ranges neither overlap nor
    /// touch (touching ones are merged).
    free: BTreeMap<u32, u32>,
    /// Slots in the array.
    size: u32,
}

impl SlotRanges {
    /// An array of `size` slots, all free.
    pub(crate) fn new(size: u32) -> Self {
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(0, size);
        }
        SlotRanges { free, size }
    }

    /// Slots owned by some range.
    pub(crate) fn used(&self) -> u32 {
        self.size - self.free.values().sum::<u32>()
    }

    /// Takes `len` slots, the first free run long enough; `None` when no
    /// run is. A zero-length range is always available (at 0, owning
    /// nothing).
    pub(crate) fn allocate(&mut self, len: u32) -> Option<u32> {
        if len == 0 {
            return Some(0);
        }
        let (&start, &run) = self.free.iter().find(|(_, &run)| run >= len)?;
        self.free.remove(&start);
        if run > len {
            self.free.insert(start + len, run - len);
        }
        Some(start)
    }

    /// Marks `[start, start + len)` as owned, as found in the maps when
    /// they are reopened. `false` (and nothing changes) when part of it is
    /// not free or lies outside the array.
    pub(crate) fn reserve(&mut self, start: u32, len: u32) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        let Some((&run_start, &run)) = self.free.range(..=start).next_back() else {
            return false;
        };
        if run_start + run < end {
            return false;
        }
        self.free.remove(&run_start);
        if run_start < start {
            self.free.insert(run_start, start - run_start);
        }
        if end < run_start + run {
            self.free.insert(end, run_start + run - end);
        }
        true
    }

    /// Gives `[start, start + len)` back, merging it with free neighbours.
    pub(crate) fn release(&mut self, start: u32, len: u32) {
        if len == 0 {
            return;
        }
        let mut start = start;
        let mut len = len;
        if let Some((&before, &run)) = self.free.range(..start).next_back() {
            if before + run == start {
                self.free.remove(&before);
                start = before;
                len += run;
            }
        }
        if let Some(after) = self.free.remove(&(start + len)) {
            len += after;
        }
        self.free.insert(start, len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_first_fit_and_refuses_when_no_run_is_long_enough() {
        let mut r = SlotRanges::new(10);
        assert_eq!(r.allocate(4), Some(0));
        assert_eq!(r.allocate(4), Some(4));
        assert_eq!(r.allocate(3), None);
        assert_eq!(r.allocate(2), Some(8));
        assert_eq!(r.used(), 10);
        assert_eq!(r.allocate(0), Some(0), "an empty range needs no slot");
    }

    #[test]
    fn released_ranges_merge_and_are_reused() {
        let mut r = SlotRanges::new(12);
        let a = r.allocate(4).unwrap();
        let b = r.allocate(4).unwrap();
        let c = r.allocate(4).unwrap();
        r.release(a, 4);
        r.release(c, 4);
        assert_eq!(r.allocate(6), None, "two runs of 4 are not one of 6");
        r.release(b, 4);
        assert_eq!(r.used(), 0);
        assert_eq!(r.allocate(12), Some(0), "merged back into one run");
    }

    #[test]
    fn reserving_what_the_maps_hold_leaves_the_rest_free() {
        let mut r = SlotRanges::new(20);
        assert!(r.reserve(5, 5));
        assert!(!r.reserve(8, 4), "overlaps a reserved range");
        assert!(!r.reserve(18, 4), "runs past the end");
        assert!(r.reserve(0, 5));
        assert_eq!(r.used(), 10);
        assert_eq!(r.allocate(10), Some(10));
        assert_eq!(r.allocate(1), None);
    }
}
