//! The invocation budget: how much one call of `handle` may ask the host to hold for it.
//!
//! What a handler stages (state writes, the keys it read, emitted events) lives in host
//! memory, outside the handler's `memory_mb`, until the commit writes it in one transaction.
//! Without a bound, a handler looping over `set` could take the host's memory, and since the
//! host would die before recording the failure, the same delivery would kill it again after
//! every restart. So every staging call is charged here, and the one that would pass the
//! handler's `max_staged_mb`, `max_writes` or `max_emits` fails the invocation: the host call
//! traps, the attempt is recorded like any other failure, and the delivery is retried and
//! then dead-lettered. The budget is checked here and nowhere else.

use crate::config::HandlerSettings;

/// Bytes charged for each staged entry beyond its key and value: the map node and version
/// the host keeps, the row the commit writes. It makes a loop of empty writes, or of reads
/// of one-byte keys, cost something.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The limits of one invocation, from its handler's settings.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    max_staged_bytes: u64,
    max_writes: u32,
    max_emits: u32,
}

/// Why an invocation went over its budget; the message names the setting to raise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetExceeded {
    #[error(
        "staged more than its `max_staged_mb` of {limit_mb} MiB (state writes, keys read and \
         emitted events) at {what}"
    )]
    Bytes { limit_mb: u64, what: String },
    #[error("wrote more than its `max_writes` of {limit} state keys, at key `{key}`")]
    Writes { limit: u32, key: String },
    #[error("emitted more than its `max_emits` of {limit} events")]
    Emits { limit: u32 },
}

/// What an invocation has spent of its [`Budget`]; the first overrun is kept, and every
/// later charge fails with it.
#[derive(Debug)]
pub struct Spent {
    budget: Budget,
    bytes: u64,
    exceeded: Option<BudgetExceeded>,
}

impl Budget {
    pub fn of(settings: &HandlerSettings) -> Budget {
        Budget {
            max_staged_bytes: settings.max_staged_bytes(),
            max_writes: settings.max_writes,
            max_emits: settings.max_emits,
        }
    }
}

impl Spent {
    pub fn new(budget: Budget) -> Spent {
        Spent {
            budget,
            bytes: 0,
            exceeded: None,
        }
    }

    /// The first overrun, if there was one.
    pub fn exceeded(&self) -> Option<&BudgetExceeded> {
        self.exceeded.as_ref()
    }

    /// Replace `old` staged bytes by `new` ones for `what` (e.g. "the write of key `k`").
    pub fn charge(&mut self, new: u64, old: u64, what: impl FnOnce() -> String) -> Charge {
        self.check()?;
        let bytes = (self.bytes - old.min(self.bytes)).saturating_add(new);
        if bytes > self.budget.max_staged_bytes {
            return self.exceed(BudgetExceeded::Bytes {
                limit_mb: self.budget.max_staged_bytes >> 20,
                what: what(),
            });
        }
        self.bytes = bytes;
        Ok(())
    }

    /// A write of a key not staged yet, when `written` keys are.
    pub fn new_write(&mut self, written: usize, key: &str) -> Charge {
        self.check()?;
        if written >= self.budget.max_writes as usize {
            return self.exceed(BudgetExceeded::Writes {
                limit: self.budget.max_writes,
                key: key.to_owned(),
            });
        }
        Ok(())
    }

    /// One more emit, when `emitted` events are staged.
    pub fn new_emit(&mut self, emitted: usize) -> Charge {
        self.check()?;
        if emitted >= self.budget.max_emits as usize {
            return self.exceed(BudgetExceeded::Emits {
                limit: self.budget.max_emits,
            });
        }
        Ok(())
    }

    fn check(&self) -> Charge {
        match &self.exceeded {
            Some(exceeded) => Err(exceeded.clone()),
            None => Ok(()),
        }
    }

    fn exceed(&mut self, exceeded: BudgetExceeded) -> Charge {
        self.exceeded = Some(exceeded.clone());
        Err(exceeded)
    }
}

/// The answer to a charge: `Err` fails the invocation.
pub type Charge = Result<(), BudgetExceeded>;

/// The bytes a staged state entry costs: its key, its value, the overhead.
pub fn entry_bytes(key: &str, value: Option<&[u8]>) -> u64 {
    (key.len() + value.map_or(0, <[u8]>::len)) as u64 + ENTRY_OVERHEAD_BYTES
}

/// The bytes an emitted event costs: every attribute, extension and its data, the overhead.
pub fn event_bytes(event: &crate::event::Event) -> u64 {
    let optional = [
        event.datacontenttype(),
        event.dataschema(),
        event.subject(),
        event.time(),
    ];
    let attributes = [event.id(), event.source(), event.ty()]
        .into_iter()
        .chain(optional.into_iter().flatten())
        .map(str::len)
        .sum::<usize>();
    let extensions = event
        .extensions()
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum::<usize>();
    let data = event.data().map_or(0, <[u8]>::len);
    (attributes + extensions + data) as u64 + ENTRY_OVERHEAD_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(mb: u32, writes: u32, emits: u32) -> Spent {
        Spent::new(Budget::of(&HandlerSettings {
            max_staged_mb: mb,
            max_writes: writes,
            max_emits: emits,
            ..HandlerSettings::default()
        }))
    }

    #[test]
    fn bytes_are_what_is_held_now_and_the_first_overrun_sticks() {
        let mut spent = spent(1, 10, 10);
        let half = 512 * 1024;
        assert_eq!(spent.charge(half, 0, String::new), Ok(()));
        // Replacing a value frees the old one.
        assert_eq!(spent.charge(half, half, String::new), Ok(()));
        assert_eq!(spent.charge(half, 0, String::new), Ok(()));
        let over = spent.charge(1, 0, || "the write of key `k`".to_owned());
        assert_eq!(
            over.unwrap_err().to_string(),
            "staged more than its `max_staged_mb` of 1 MiB (state writes, keys read and \
             emitted events) at the write of key `k`"
        );
        // Once over, every charge fails the same way, even one that would fit.
        assert!(spent.charge(0, half, String::new).is_err());
        assert!(spent.new_emit(0).is_err());
        assert!(matches!(
            spent.exceeded(),
            Some(BudgetExceeded::Bytes { .. })
        ));
    }

    #[test]
    fn writes_and_emits_are_counted_up_to_their_limit() {
        let mut spent = spent(1, 2, 0);
        assert_eq!(spent.new_write(1, "b"), Ok(()));
        assert_eq!(
            spent.new_write(2, "c").unwrap_err().to_string(),
            "wrote more than its `max_writes` of 2 state keys, at key `c`"
        );
        let mut spent = self::spent(1, 2, 0);
        assert_eq!(
            spent.new_emit(0).unwrap_err().to_string(),
            "emitted more than its `max_emits` of 0 events"
        );
    }
}
