//! Window arithmetic for windowed aggregations: which windows a timestamp falls in, and when a
//! window may be closed. Pure functions; a processor keys its store by [`Window::key`] and
//! schedules a stream-time timer at [`Windows::close_at`].

/// A half-open time window `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

impl Window {
    /// Big-endian start then end: sorts by time in a byte-ordered store.
    pub fn key(&self) -> [u8; 16] {
        let mut k = [0u8; 16];
        // Flipping the sign bit makes negative times sort before positive ones.
        k[..8].copy_from_slice(&((self.start_ms as u64) ^ (1 << 63)).to_be_bytes());
        k[8..].copy_from_slice(&((self.end_ms as u64) ^ (1 << 63)).to_be_bytes());
        k
    }
}

/// Tumbling (advance == size) or hopping (advance < size) windows with a grace period for late
/// records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub size_ms: i64,
    pub advance_ms: i64,
    pub grace_ms: i64,
}

impl Windows {
    pub fn tumbling(size_ms: i64, grace_ms: i64) -> Windows {
        Windows {
            size_ms,
            advance_ms: size_ms,
            grace_ms,
        }
    }

    /// `None` unless `0 < advance <= size` and `grace >= 0`.
    pub fn hopping(size_ms: i64, advance_ms: i64, grace_ms: i64) -> Option<Windows> {
        (size_ms > 0 && advance_ms > 0 && advance_ms <= size_ms && grace_ms >= 0).then_some(
            Windows {
                size_ms,
                advance_ms,
                grace_ms,
            },
        )
    }

    /// Every window containing `ts_ms`, oldest first.
    pub fn windows_for(&self, ts_ms: i64) -> Vec<Window> {
        if self.size_ms <= 0 || self.advance_ms <= 0 {
            return Vec::new();
        }
        // The latest window start at or before ts, aligned to the advance.
        let last_start = ts_ms - ts_ms.rem_euclid(self.advance_ms);
        let mut out = Vec::new();
        let mut start = last_start;
        while start > ts_ms - self.size_ms {
            out.push(Window {
                start_ms: start,
                end_ms: start + self.size_ms,
            });
            start -= self.advance_ms;
        }
        out.reverse();
        out
    }

    /// Stream time at which `w` can be closed and emitted: its end plus grace.
    pub fn close_at(&self, w: &Window) -> i64 {
        w.end_ms.saturating_add(self.grace_ms)
    }

    /// The windows of `ts_ms` that are still open at `stream_time` (a late record only updates
    /// windows whose grace has not passed).
    pub fn open_windows_for(&self, ts_ms: i64, stream_time: i64) -> Vec<Window> {
        self.windows_for(ts_ms)
            .into_iter()
            .filter(|w| stream_time < self.close_at(w))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_assigns_one_window() {
        let w = Windows::tumbling(10, 0);
        assert_eq!(
            w.windows_for(0),
            vec![Window {
                start_ms: 0,
                end_ms: 10
            }]
        );
        assert_eq!(
            w.windows_for(9),
            vec![Window {
                start_ms: 0,
                end_ms: 10
            }]
        );
        assert_eq!(
            w.windows_for(10),
            vec![Window {
                start_ms: 10,
                end_ms: 20
            }]
        );
        assert_eq!(
            w.windows_for(-1),
            vec![Window {
                start_ms: -10,
                end_ms: 0
            }]
        );
    }

    #[test]
    fn hopping_assigns_overlapping_windows() {
        let w = Windows::hopping(10, 5, 0).expect("valid");
        assert_eq!(
            w.windows_for(12),
            vec![
                Window {
                    start_ms: 5,
                    end_ms: 15
                },
                Window {
                    start_ms: 10,
                    end_ms: 20
                }
            ]
        );
        assert_eq!(w.windows_for(5).len(), 2);
        assert!(Windows::hopping(10, 11, 0).is_none());
        assert!(Windows::hopping(10, 0, 0).is_none());
        assert!(Windows::hopping(10, 5, -1).is_none());
    }

    #[test]
    fn grace_decides_late_records() {
        let w = Windows::tumbling(10, 5);
        let first = Window {
            start_ms: 0,
            end_ms: 10,
        };
        assert_eq!(w.close_at(&first), 15);
        // Stream time 14: the record at 3 is late but within grace.
        assert_eq!(w.open_windows_for(3, 14), vec![first]);
        // Stream time 15: the window has closed; the late record is dropped.
        assert!(w.open_windows_for(3, 15).is_empty());
    }

    #[test]
    fn keys_sort_by_time() {
        let a = Window {
            start_ms: -5,
            end_ms: 5,
        }
        .key();
        let b = Window {
            start_ms: 0,
            end_ms: 10,
        }
        .key();
        let c = Window {
            start_ms: 300,
            end_ms: 310,
        }
        .key();
        assert!(a < b && b < c);
    }
}
