//! Who holds which GPU. Owned by the node's one task, so no locking: every
//! call sees the pool as the last one left it.

use serde_json::{json, Value};

use super::{gpu_labels, Gpu, Holder, Inventory, Source};

/// Why GPUs cannot be given; the texts carry the numbers an operator needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuError {
    #[error("the {noun} asks for {}, but this node has none ({why})", gpus(*asked), noun = holder.noun(), why = no_gpu_reason(*inventory))]
    NoGpu {
        holder: Holder,
        asked: usize,
        /// Why the node has none.
        inventory: Source,
    },
    #[error("the {noun} asks for {}, but this node has {has} (gpus: {list})", gpus(*asked), noun = holder.noun())]
    MoreThanTheNodeHas {
        holder: Holder,
        asked: usize,
        has: usize,
        /// The node's GPUs, `0,1`.
        list: String,
    },
    #[error(
        "the {noun} asks for {}, but {free} of {total} GPUs {are} free; held by {held}",
        gpus(*asked),
        noun = holder.noun(),
        are = if *free == 1 { "is" } else { "are" }
    )]
    NotEnoughFree {
        holder: Holder,
        asked: usize,
        free: usize,
        total: usize,
        /// `workload r-1 (GPU 0), deployment d-2 (GPUs 1, 2)`.
        held: String,
    },
    #[error("{holder} already holds {held}; it must release them before asking again")]
    AlreadyHolding { holder: Holder, held: String },
}

impl GpuError {
    /// True when the request could be served later, once GPUs are released
    /// (worth queueing); false when this node can never serve it.
    pub fn is_temporary(&self) -> bool {
        match self {
            GpuError::NotEnoughFree { .. } => true,
            GpuError::NoGpu { .. }
            | GpuError::MoreThanTheNodeHas { .. }
            | GpuError::AlreadyHolding { .. } => false,
        }
    }
}

fn gpus(n: usize) -> String {
    if n == 1 {
        "1 GPU".to_owned()
    } else {
        format!("{n} GPUs")
    }
}

fn no_gpu_reason(source: Source) -> &'static str {
    match source {
        Source::Off => "gpus: none",
        Source::Nvml => "NVML reports no GPU; the gpus setting can declare them",
        Source::Declared => "the gpus setting declares none",
    }
}

/// The node's GPUs and their holders.
#[derive(Debug, Clone)]
pub struct GpuPool {
    gpus: Vec<Gpu>,
    /// `held[i]` holds `gpus[i]`.
    held: Vec<Option<Holder>>,
    source: Source,
}

impl GpuPool {
    pub fn new(inventory: Inventory) -> GpuPool {
        GpuPool {
            held: vec![None; inventory.gpus.len()],
            gpus: inventory.gpus,
            source: inventory.source,
        }
    }

    pub fn free_count(&self) -> usize {
        self.held.iter().filter(|h| h.is_none()).count()
    }

    /// Whether `assign(holder, count)` would succeed now, without taking
    /// anything. `count` 0 always fits.
    pub fn check(&self, holder: &Holder, count: usize) -> Result<(), GpuError> {
        if count == 0 {
            return Ok(());
        }
        let mine = self.held_by(holder);
        if !mine.is_empty() {
            return Err(GpuError::AlreadyHolding {
                holder: holder.clone(),
                held: gpu_labels(&mine),
            });
        }
        if self.gpus.is_empty() {
            return Err(GpuError::NoGpu {
                holder: holder.clone(),
                asked: count,
                inventory: self.source,
            });
        }
        if count > self.gpus.len() {
            return Err(GpuError::MoreThanTheNodeHas {
                holder: holder.clone(),
                asked: count,
                has: self.gpus.len(),
                list: self
                    .gpus
                    .iter()
                    .map(Gpu::label)
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        let free = self.free_count();
        if free < count {
            return Err(GpuError::NotEnoughFree {
                holder: holder.clone(),
                asked: count,
                free,
                total: self.gpus.len(),
                held: self.held_list(),
            });
        }
        Ok(())
    }

    /// Gives `holder` `count` GPUs of its own, the lowest free indexes
    /// first; `count` 0 gives none and holds nothing.
    pub fn assign(&mut self, holder: Holder, count: usize) -> Result<Vec<Gpu>, GpuError> {
        self.check(&holder, count)?;
        let mut given = Vec::with_capacity(count);
        for (gpu, held) in self.gpus.iter().zip(self.held.iter_mut()) {
            if given.len() == count {
                break;
            }
            if held.is_none() {
                *held = Some(holder.clone());
                given.push(gpu.clone());
            }
        }
        Ok(given)
    }

    /// Holds again what a record says `holder` held (its GPUs' ids, see
    /// [`Gpu::id`]), after a restart adopted it. An id this pool does not
    /// know (the machine or the `gpus` setting changed) or one another
    /// holder already has is logged and skipped: the holder runs on, and
    /// the GPU is not handed out twice.
    pub fn reserve(&mut self, holder: Holder, ids: &[String]) -> Vec<Gpu> {
        let mut reserved = Vec::new();
        for id in ids {
            let Some(at) = self.gpus.iter().position(|g| g.id() == *id) else {
                tracing::warn!(
                    "{holder} held GPU {id}, which this node no longer has; not reserved"
                );
                continue;
            };
            match &self.held[at] {
                Some(other) if *other != holder => {
                    tracing::warn!(
                        "{holder} held GPU {id}, which {other} holds now; not reserved twice"
                    );
                    continue;
                }
                Some(_) | None => self.held[at] = Some(holder.clone()),
            }
            reserved.push(self.gpus[at].clone());
        }
        reserved
    }

    /// Frees what `holder` holds and returns it (empty when nothing).
    pub fn release(&mut self, holder: &Holder) -> Vec<Gpu> {
        let mut freed = Vec::new();
        for (gpu, held) in self.gpus.iter().zip(self.held.iter_mut()) {
            if held.as_ref() == Some(holder) {
                *held = None;
                freed.push(gpu.clone());
            }
        }
        freed
    }

    /// What `holder` holds now.
    pub fn held_by(&self, holder: &Holder) -> Vec<Gpu> {
        self.holders()
            .filter(|(_, h)| *h == Some(holder))
            .map(|(gpu, _)| gpu.clone())
            .collect()
    }

    /// Every GPU with its holder, in index order.
    pub fn holders(&self) -> impl Iterator<Item = (&Gpu, Option<&Holder>)> + '_ {
        self.gpus.iter().zip(self.held.iter().map(Option::as_ref))
    }

    /// `status`'s `gpus` (docs/protocol.md).
    pub fn status(&self) -> Value {
        self.holders()
            .map(|(gpu, holder)| {
                json!({
                    "index": gpu.index,
                    "uuid": gpu.uuid,
                    "name": gpu.name,
                    "memory_total_bytes": gpu.memory_total_bytes,
                    "mig": gpu.mig,
                    "declared": gpu.declared,
                    "held_by": holder,
                })
            })
            .collect()
    }

    /// The heartbeat's `gpus`: how many, how many held.
    pub fn summary(&self) -> Value {
        json!({"count": self.gpus.len(), "held": self.gpus.len() - self.free_count()})
    }

    /// `workload r-1 (GPU 0), deployment d-2 (GPUs 1, 2)`, holders in the
    /// order of their first GPU.
    fn held_list(&self) -> String {
        let mut by_holder: Vec<(&Holder, Vec<&Gpu>)> = Vec::new();
        for (gpu, holder) in self.holders() {
            let Some(holder) = holder else { continue };
            match by_holder.iter_mut().find(|(h, _)| *h == holder) {
                Some((_, list)) => list.push(gpu),
                None => by_holder.push((holder, vec![gpu])),
            }
        }
        by_holder
            .into_iter()
            .map(|(holder, list)| format!("{holder} ({})", gpu_labels(list)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpus::declared;

    fn pool(n: u32) -> GpuPool {
        GpuPool::new(Inventory {
            gpus: (0..n).map(declared).collect(),
            source: Source::Declared,
        })
    }

    fn work(id: &str) -> Holder {
        Holder::Workload(id.into())
    }

    fn deploy(id: &str) -> Holder {
        Holder::Deployment(id.into())
    }

    fn indexes(gpus: &[Gpu]) -> Vec<u32> {
        gpus.iter().map(|g| g.index).collect()
    }

    #[test]
    fn assignment_is_exclusive_lowest_free_first() {
        let mut pool = pool(4);
        assert_eq!(indexes(&pool.assign(work("r-1"), 1).unwrap()), [0]);
        assert_eq!(indexes(&pool.assign(deploy("d-2"), 2).unwrap()), [1, 2]);
        assert_eq!(indexes(&pool.assign(work("r-3"), 1).unwrap()), [3]);
        assert_eq!(pool.free_count(), 0);
        let holders: Vec<Option<&Holder>> = pool.holders().map(|(_, h)| h).collect();
        assert_eq!(
            holders,
            [
                Some(&work("r-1")),
                Some(&deploy("d-2")),
                Some(&deploy("d-2")),
                Some(&work("r-3"))
            ]
        );
        assert_eq!(indexes(&pool.release(&deploy("d-2"))), [1, 2]);
        assert_eq!(indexes(&pool.assign(work("r-4"), 1).unwrap()), [1]);
        assert_eq!(indexes(&pool.held_by(&work("r-4"))), [1]);
        assert!(pool.release(&deploy("d-2")).is_empty(), "released once");
    }

    #[test]
    fn zero_gpus_hold_nothing_even_on_a_gpu_less_node() {
        let mut none = pool(0);
        assert!(none.assign(work("r-1"), 0).unwrap().is_empty());
        let mut some = pool(2);
        assert!(some.assign(work("r-1"), 0).unwrap().is_empty());
        assert_eq!(some.free_count(), 2);
    }

    #[test]
    fn asking_more_than_the_node_has_says_how_many_it_has() {
        let mut pool = pool(2);
        let err = pool.assign(work("r-1"), 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the workload asks for 3 GPUs, but this node has 2 (gpus: 0,1)"
        );
        assert!(!err.is_temporary());
        assert_eq!(pool.free_count(), 2, "nothing taken");
    }

    #[test]
    fn not_enough_free_names_the_holders() {
        let mut pool = pool(4);
        pool.assign(work("r-1"), 1).unwrap();
        pool.assign(deploy("d-2"), 1).unwrap();
        let err = pool.assign(work("r-3"), 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the workload asks for 3 GPUs, but 2 of 4 GPUs are free; held by workload r-1 (GPU 0), deployment d-2 (GPU 1)"
        );
        assert!(err.is_temporary());
        pool.assign(work("r-4"), 1).unwrap();
        let err = pool.assign(deploy("d-5"), 2).unwrap_err().to_string();
        assert!(
            err.starts_with("the deployment asks for 2 GPUs, but 1 of 4 GPUs is free;"),
            "{err}"
        );
        assert_eq!(pool.held_by(&work("r-3")), Vec::new());
    }

    #[test]
    fn a_node_without_gpus_says_why() {
        let mut off = GpuPool::new(Inventory {
            gpus: Vec::new(),
            source: Source::Off,
        });
        assert_eq!(
            off.assign(work("r-1"), 1).unwrap_err().to_string(),
            "the workload asks for 1 GPU, but this node has none (gpus: none)"
        );
        let mut nvml = GpuPool::new(Inventory {
            gpus: Vec::new(),
            source: Source::Nvml,
        });
        let err = nvml.assign(deploy("d-1"), 2).unwrap_err();
        assert!(err.to_string().contains("NVML reports no GPU"), "{err}");
        assert!(!err.is_temporary());
    }

    #[test]
    fn a_holder_asks_once() {
        let mut pool = pool(4);
        pool.assign(work("r-1"), 2).unwrap();
        let err = pool.assign(work("r-1"), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "workload r-1 already holds GPUs 0, 1; it must release them before asking again"
        );
        assert_eq!(pool.free_count(), 2);
    }

    #[test]
    fn reserve_takes_back_what_a_record_says_and_skips_the_rest() {
        let mut pool = pool(4);
        pool.assign(deploy("d-1"), 1).unwrap();
        let ids = ["2", "0", "9"].map(String::from);
        let got = pool.reserve(work("r-1"), &ids);
        assert_eq!(indexes(&got), [2], "9 unknown, 0 held by d-1");
        assert_eq!(indexes(&pool.held_by(&work("r-1"))), [2]);
        assert_eq!(
            indexes(&pool.reserve(work("r-1"), &ids[..1])),
            [2],
            "again is fine"
        );
        assert_eq!(indexes(&pool.assign(work("r-2"), 2).unwrap()), [1, 3]);
    }

    #[test]
    fn reserve_finds_gpus_by_uuid() {
        let mut gpus: Vec<Gpu> = (0..2).map(declared).collect();
        gpus[1].uuid = Some("GPU-bb".into());
        let mut pool = GpuPool::new(Inventory {
            gpus,
            source: Source::Nvml,
        });
        let got = pool.reserve(deploy("d-1"), &["GPU-bb".to_owned()]);
        assert_eq!(indexes(&got), [1]);
    }

    #[test]
    fn status_and_summary_show_each_gpu_and_its_holder() {
        let mut pool = pool(2);
        pool.assign(deploy("d-9"), 1).unwrap();
        let status = pool.status();
        assert_eq!(status[0]["held_by"], json!({"deployment": "d-9"}));
        assert_eq!(status[1]["held_by"], Value::Null);
        assert_eq!(status[1]["index"], 1);
        assert_eq!(status[1]["uuid"], Value::Null);
        assert_eq!(status[1]["name"], "declared GPU");
        assert_eq!(status[1]["memory_total_bytes"], 0);
        assert_eq!(pool.summary(), json!({"count": 2, "held": 1}));
    }
}
