//! The durable store: one redb file in `ECS_DATADIR` holding everything that must survive a
//! crash (instance registration, ACS sequence number, tasks, unreported state changes, metrics
//! spool).
//!
//! Values are JSON documents keyed by strings, grouped in named tables. Every write is one redb
//! transaction, committed durably before the call returns, so a kill -9 at any point loses nothing
//! that was acknowledged. [`Store::transaction`] groups several writes atomically.
//!
//! The file carries a schema version; [`MIGRATIONS`] upgrades older files in place on open, and a
//! file from a newer agent is refused rather than misread.
//!
//! This module never decides what to store; owners of the data call it. Credentials must never be
//! passed to it (design.md resolution 7).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Current schema version written to new files.
pub const SCHEMA_VERSION: u64 = 1;

/// One migration per version step: `MIGRATIONS[n]` upgrades a version `n + 1` file to `n + 2`.
/// Each runs inside the same write transaction as the version bump.
pub static MIGRATIONS: &[Migration] = &[];

/// One schema upgrade step.
pub type Migration = fn(&Transaction<'_>) -> Result<(), Error>;

/// A table name. Tables are created on first write; reading an absent table gives nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Table(pub &'static str);

/// Store-wide bookkeeping (schema version).
pub const META: Table = Table("meta");
/// Registration and instance facts (owned by `ecs::register`).
pub const INSTANCE: Table = Table("instance");

const SCHEMA_KEY: &str = "schema_version";

/// Store errors. None of them is retryable inside the agent: a store that fails is a broken disk
/// or a second agent holding the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened (another ecs-hostd may hold it).
    #[error("cannot open state database {path}: {source}")]
    Open {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// The file was written by a newer ecs-hostd.
    #[error(
        "state database {path} has schema version {found}, newer than this agent's {SCHEMA_VERSION}; upgrade ecs-hostd or move the file away"
    )]
    TooNew {
        /// File.
        path: PathBuf,
        /// Version found.
        found: u64,
    },
    /// A redb operation failed.
    #[error("state database: {0}")]
    Db(#[from] Box<redb::Error>),
    /// A stored value could not be (de)serialised.
    #[error("state database value {table}/{key}: {source}")]
    Codec {
        /// Table.
        table: &'static str,
        /// Key.
        key: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

fn db_err<E: Into<redb::Error>>(e: E) -> Error {
    Error::Db(Box::new(e.into()))
}

/// The store handle. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    db: Arc<redb::Database>,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A write transaction: several writes that commit together or not at all.
pub struct Transaction<'a> {
    txn: &'a redb::WriteTransaction,
}

impl Transaction<'_> {
    /// Stores `value` as JSON under `key`.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|source| Error::Codec {
            table: table.0,
            key: key.to_owned(),
            source,
        })?;
        let mut t = self.txn.open_table(def(table)).map_err(db_err)?;
        t.insert(key, bytes.as_slice()).map_err(db_err)?;
        Ok(())
    }

    /// Removes `key`; absent keys are fine.
    pub fn remove(&self, table: Table, key: &str) -> Result<(), Error> {
        let mut t = self.txn.open_table(def(table)).map_err(db_err)?;
        t.remove(key).map_err(db_err)?;
        Ok(())
    }

    /// Reads `key` inside this transaction.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, Error> {
        let t = self.txn.open_table(def(table)).map_err(db_err)?;
        let v = t.get(key).map_err(db_err)?;
        v.map(|v| decode(table, key, v.value())).transpose()
    }
}

fn def(table: Table) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(table.0)
}

fn decode<T: DeserializeOwned>(table: Table, key: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Codec {
        table: table.0,
        key: key.to_owned(),
        source,
    })
}

impl Store {
    /// Opens (creating if needed) the database at `path`, creating its directory with mode 0700,
    /// and migrates it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Store, Error> {
        if let Some(dir) = path.parent() {
            create_private_dir(dir)?;
        }
        let db = redb::Database::create(path).map_err(|e| Error::Open {
            path: path.to_owned(),
            source: Box::new(e),
        })?;
        let store = Store {
            db: Arc::new(db),
            path: path.to_owned(),
        };
        store.migrate()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn migrate(&self) -> Result<(), Error> {
        self.transaction(|tx| {
            let found: Option<u64> = tx.get(META, SCHEMA_KEY)?;
            let mut version = match found {
                None => {
                    tx.put(META, SCHEMA_KEY, &SCHEMA_VERSION)?;
                    return Ok(());
                }
                Some(v) if v > SCHEMA_VERSION => {
                    return Err(Error::TooNew {
                        path: self.path.clone(),
                        found: v,
                    });
                }
                Some(v) => v,
            };
            while version < SCHEMA_VERSION {
                let step = MIGRATIONS
                    .get((version - 1) as usize)
                    .expect("a migration exists for every version below SCHEMA_VERSION");
                step(tx)?;
                version += 1;
            }
            tx.put(META, SCHEMA_KEY, &version)
        })
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u64, Error> {
        Ok(self.get(META, SCHEMA_KEY)?.unwrap_or(0))
    }

    /// Runs `f` in one write transaction and commits durably if it returns `Ok`. On `Err` nothing
    /// is written.
    pub fn transaction<R>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let result = f(&Transaction { txn: &txn });
        match result {
            Ok(r) => {
                txn.commit().map_err(db_err)?;
                Ok(r)
            }
            Err(e) => {
                txn.abort().map_err(db_err)?;
                Err(e)
            }
        }
    }

    /// Stores one value durably.
    pub fn put<T: Serialize>(&self, table: Table, key: &str, value: &T) -> Result<(), Error> {
        self.transaction(|tx| tx.put(table, key, value))
    }

    /// Removes one value durably.
    pub fn remove(&self, table: Table, key: &str) -> Result<(), Error> {
        self.transaction(|tx| tx.remove(table, key))
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned>(&self, table: Table, key: &str) -> Result<Option<T>, Error> {
        let read = self.db.begin_read().map_err(db_err)?;
        let t = match read.open_table(def(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(e)),
        };
        let v = t.get(key).map_err(db_err)?;
        v.map(|v| decode(table, key, v.value())).transpose()
    }

    /// Every `(key, value)` of a table, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: Table) -> Result<Vec<(String, T)>, Error> {
        let read = self.db.begin_read().map_err(db_err)?;
        let t = match read.open_table(def(table)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(db_err(e)),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push((k.value().to_owned(), decode(table, k.value(), v.value())?));
        }
        Ok(out)
    }

    /// Number of entries in a table.
    pub fn len(&self, table: Table) -> Result<u64, Error> {
        let read = self.db.begin_read().map_err(db_err)?;
        match read.open_table(def(table)) {
            Ok(t) => t.len().map_err(db_err),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(db_err(e)),
        }
    }
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::CreateDir {
            path: dir.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Table = Table("things");

    #[test]
    fn values_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put(T, "a", &vec![1, 2, 3]).unwrap();
            s.put(T, "b", &"two").unwrap();
            s.remove(T, "b").unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get::<Vec<i32>>(T, "a").unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(s.get::<String>(T, "b").unwrap(), None);
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.list::<Vec<i32>>(T).unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn failed_transaction_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        let r: Result<(), Error> = s.transaction(|tx| {
            tx.put(T, "x", &1)?;
            Err(Error::TooNew {
                path: "p".into(),
                found: 9,
            })
        });
        assert!(r.is_err());
        assert_eq!(s.get::<i32>(T, "x").unwrap(), None);
        assert_eq!(s.len(T).unwrap(), 0);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        Store::open(&path)
            .unwrap()
            .put(META, SCHEMA_KEY, &(SCHEMA_VERSION + 1))
            .unwrap();
        assert!(matches!(Store::open(&path), Err(Error::TooNew { .. })));
    }

    #[test]
    fn corrupt_value_is_a_codec_error_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        s.put(T, "k", &"text").unwrap();
        let e = s.get::<u64>(T, "k").unwrap_err();
        assert!(e.to_string().contains("things/k"), "{e}");
    }
}
