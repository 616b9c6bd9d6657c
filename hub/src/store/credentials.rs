//! Devices' MQTT passwords, stored by device id as a salt and a keyed argon2 hash (never the
//! password); `auth::credentials` makes and checks them.

use serde::{Deserialize, Serialize};

use super::*;

/// A device's MQTT password, as kept in the `Credentials` table under the device id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// The random salt of the hash; empty once revoked.
    pub salt: Vec<u8>,
    /// The argon2id hash of the password under the hub's key; empty once revoked.
    pub hash: Vec<u8>,
    /// Argon2 memory cost (KiB), passes and lanes the hash was made with.
    pub cost: (u32, u32, u32),
    /// When the first password of this credential was made (hub clock).
    pub created_ms: u64,
    /// When the password was last replaced, if it was.
    pub rotated_ms: Option<u64>,
    /// When it was revoked, if it was (it is then refused, and kept for the list).
    pub revoked_ms: Option<u64>,
}

impl Store {
    /// Every device's credential record, by device id.
    pub fn credentials(&self) -> Result<Vec<(String, CredentialRecord)>, StoreError> {
        let snap = self.engine.snapshot()?;
        let mut found = Vec::new();
        scan_records::<CredentialRecord>(
            &*snap,
            Table::Credentials,
            &KeyRange::all(),
            "device credential",
            |k, record| {
                found.push((String::from_utf8_lossy(k).into_owned(), record));
                ControlFlow::Continue(())
            },
        )?;
        Ok(found)
    }

    /// Stores `device`'s credential record, durably.
    pub fn put_credential(
        &self,
        device: &str,
        record: &CredentialRecord,
    ) -> Result<(), StoreError> {
        let mut batch = WriteBatch::new();
        batch.put(
            Table::Credentials,
            device.as_bytes().to_vec(),
            records::encode(record)?,
        );
        Ok(self.engine.commit(&batch)?)
    }
}
