//! The engine's tables in the durable store: task records (desired, known and emitted status,
//! Docker names and ids; spec §15), images it pulled (for image cleanup) and tombstones of
//! cleaned-up tasks (so a late ACS re-delivery does not resurrect them).
//!
//! Records never contain credentials (design.md resolution 7). Writes go through the caller's
//! transaction so a status and the state change it emits commit together.

use crate::engine::cleanup::ImageRecord;
use crate::engine::model::TaskRecord;
use crate::store::{Error, Store, Table, Transaction};

/// Task records by ARN.
pub const TASKS: Table = Table("engine_tasks");
/// Images the engine pulled, by reference.
pub const IMAGES: Table = Table("engine_images");
/// Removed task ARNs → epoch seconds of removal.
pub const TOMBSTONES: Table = Table("engine_tombstones");
/// Counters.
pub const META: Table = Table("engine_meta");
/// Task ENI attachments from ACS, by attachment ARN (the official agent's `eniattachments`
/// bucket).
pub const ENI_ATTACHMENTS: Table = Table("eniattachments");

/// A recorded ENI attachment: what ACS said and until when the ENI may take to appear.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AttachmentRecord {
    /// What ACS sent.
    pub attachment: crate::tasks::EniAttachment,
    /// Epoch seconds it was first received.
    pub received_at: f64,
    /// Epoch seconds after which the ENI will not appear (`received_at` + `waitTimeoutMs`).
    pub expires_at: f64,
}
const SEQ_KEY: &str = "next_seq";

/// Tombstones older than this are forgotten (ACS stops re-sending a task long before).
pub const TOMBSTONE_TTL_SECS: f64 = 7.0 * 24.0 * 3600.0;

/// Everything the engine keeps.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Task records.
    pub tasks: Vec<TaskRecord>,
    /// Pulled images.
    pub images: Vec<ImageRecord>,
    /// Tombstoned ARNs with their removal time.
    pub tombstones: Vec<(String, f64)>,
    /// Next delivery sequence number.
    pub next_seq: u64,
    /// ENI attachments.
    pub attachments: Vec<AttachmentRecord>,
}

/// Reads the engine's state.
pub fn load(store: &Store) -> Result<Loaded, Error> {
    Ok(Loaded {
        tasks: store
            .list::<TaskRecord>(TASKS)?
            .into_iter()
            .map(|(_, t)| t)
            .collect(),
        images: store
            .list::<ImageRecord>(IMAGES)?
            .into_iter()
            .map(|(_, i)| i)
            .collect(),
        tombstones: store.list::<f64>(TOMBSTONES)?,
        next_seq: store.get::<u64>(META, SEQ_KEY)?.unwrap_or(1),
        attachments: store
            .list::<AttachmentRecord>(ENI_ATTACHMENTS)?
            .into_iter()
            .map(|(_, a)| a)
            .collect(),
    })
}

/// Writes a task record.
pub fn put_task(tx: &Transaction<'_>, rec: &TaskRecord) -> Result<(), Error> {
    tx.put(TASKS, &rec.spec.arn, rec)
}

/// Records the next sequence number.
pub fn put_seq(tx: &Transaction<'_>, next: u64) -> Result<(), Error> {
    tx.put(META, SEQ_KEY, &next)
}

/// Deletes a task and tombstones its ARN.
pub fn remove_task(tx: &Transaction<'_>, arn: &str, now: f64) -> Result<(), Error> {
    tx.remove(TASKS, arn)?;
    tx.put(TOMBSTONES, arn, &now)
}

/// Forgets a tombstone.
pub fn drop_tombstone(tx: &Transaction<'_>, arn: &str) -> Result<(), Error> {
    tx.remove(TOMBSTONES, arn)
}

/// Writes an ENI attachment.
pub fn put_attachment(tx: &Transaction<'_>, a: &AttachmentRecord) -> Result<(), Error> {
    tx.put(ENI_ATTACHMENTS, &a.attachment.attachment_arn, a)
}

/// Forgets an ENI attachment.
pub fn remove_attachment(tx: &Transaction<'_>, attachment_arn: &str) -> Result<(), Error> {
    tx.remove(ENI_ATTACHMENTS, attachment_arn)
}

/// Writes an image record.
pub fn put_image(tx: &Transaction<'_>, rec: &ImageRecord) -> Result<(), Error> {
    tx.put(IMAGES, &rec.image, rec)
}

/// Deletes an image record.
pub fn remove_image(tx: &Transaction<'_>, image: &str) -> Result<(), Error> {
    tx.remove(IMAGES, image)
}
