//! Task-role and execution-role credentials, in memory only (task-credentials.md §2).
//!
//! The ACS handler fills the store (PayloadMessage, IAMRoleCredentialsMessage); the task endpoint
//! (`/v2/credentials/<id>`) looks entries up by `credentialsId`; the engine's puller reads a
//! task's execution-role credentials by task ARN and role. After a restart the engine registers
//! the credentials ids its records kept as **pending**: the endpoint answers them 503 until ACS
//! delivers the credentials, and ids never seen 400 (§2.4). The engine removes a task's
//! task-role entry when the task stops and its execution-role entry at cleanup (§2.5).
//!
//! Never persists, logs or shows a credential: `Debug` hides the secrets and the id (an id is a
//! bearer token for whoever can reach 169.254.170.2). Performs no I/O.

use std::collections::HashMap;
use std::sync::Mutex;

/// Which role a credential set belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoleType {
    /// The task's own role (`roleCredentials`, `TaskApplication`).
    TaskApplication,
    /// The execution role, used by the agent for ECR pulls and logs (`TaskExecution`).
    TaskExecution,
}

impl RoleType {
    /// The ACS spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RoleType::TaskApplication => "TaskApplication",
            RoleType::TaskExecution => "TaskExecution",
        }
    }
}

/// One credential set delivered by ACS. `Debug` never shows the secrets nor the id.
#[derive(Clone, PartialEq, Eq)]
pub struct RoleCredentials {
    /// `credentialsId`.
    pub credentials_id: String,
    /// `roleArn`.
    pub role_arn: String,
    /// `accessKeyId`.
    pub access_key_id: String,
    /// `secretAccessKey`.
    pub secret_access_key: String,
    /// `sessionToken`.
    pub session_token: String,
    /// `expiration`, echoed exactly as received.
    pub expiration: String,
}

impl std::fmt::Debug for RoleCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleCredentials")
            .field("role_arn", &self.role_arn)
            .field("expiration", &self.expiration)
            .finish_non_exhaustive()
    }
}

/// A stored entry: whose credentials they are, and the credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The task they were delivered for.
    pub task_arn: String,
    /// Which of its roles.
    pub role: RoleType,
    /// The credentials.
    pub credentials: RoleCredentials,
}

/// What the store knows about a credentials id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Delivered and held.
    Found(Entry),
    /// Known from a task record (after a restart), not yet delivered by ACS: answer 503.
    Pending {
        /// The task the id belongs to.
        task_arn: String,
        /// Which of its roles.
        role: RoleType,
    },
    /// Never seen, or removed: answer 400.
    Unknown,
}

#[derive(Debug, Default)]
struct Inner {
    /// Entries by `credentialsId`.
    by_id: HashMap<String, Entry>,
    /// The id most recently stored for a task's role (the puller's lookup).
    latest: HashMap<(String, RoleType), String>,
    /// Ids known from task records but not delivered yet.
    pending: HashMap<String, (String, RoleType)>,
}

/// Credentials by `credentialsId`, in memory only.
#[derive(Debug, Default)]
pub struct CredentialsStore {
    inner: Mutex<Inner>,
}

impl CredentialsStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores (replaces) the credentials delivered for a task's role, under their
    /// `credentialsId`. An entry stored earlier under another id stays (a refresh that changes
    /// the id must not break a container that still has the old one, §2.3).
    pub fn set(&self, task_arn: &str, role: RoleType, creds: RoleCredentials) {
        let mut inner = self.lock();
        let id = creds.credentials_id.clone();
        inner.pending.remove(&id);
        inner.latest.insert((task_arn.to_owned(), role), id.clone());
        inner.by_id.insert(
            id,
            Entry {
                task_arn: task_arn.to_owned(),
                role,
                credentials: creds,
            },
        );
    }

    /// A task's latest credentials for one role (the puller's lookup).
    pub fn get(&self, task_arn: &str, role: RoleType) -> Option<RoleCredentials> {
        let inner = self.lock();
        let id = inner.latest.get(&(task_arn.to_owned(), role))?;
        inner.by_id.get(id).map(|e| e.credentials.clone())
    }

    /// What the store knows about `credentials_id` (the endpoint's lookup).
    pub fn lookup(&self, credentials_id: &str) -> Lookup {
        let inner = self.lock();
        if let Some(e) = inner.by_id.get(credentials_id) {
            return Lookup::Found(e.clone());
        }
        match inner.pending.get(credentials_id) {
            Some((task_arn, role)) => Lookup::Pending {
                task_arn: task_arn.clone(),
                role: *role,
            },
            None => Lookup::Unknown,
        }
    }

    /// Marks `credentials_id` of a task's role as known but not delivered yet (a task loaded
    /// from the store after a restart). No effect when the credentials are already held.
    pub fn register_pending(&self, task_arn: &str, role: RoleType, credentials_id: &str) {
        if credentials_id.is_empty() {
            return;
        }
        let mut inner = self.lock();
        if inner.by_id.contains_key(credentials_id) {
            return;
        }
        inner
            .pending
            .insert(credentials_id.to_owned(), (task_arn.to_owned(), role));
    }

    /// Drops every entry and pending mark of a task's role (§2.5): later requests for those ids
    /// get 400.
    pub fn remove(&self, task_arn: &str, role: RoleType) {
        let mut inner = self.lock();
        inner.latest.remove(&(task_arn.to_owned(), role));
        inner
            .by_id
            .retain(|_, e| !(e.task_arn == task_arn && e.role == role));
        inner
            .pending
            .retain(|_, (arn, r)| !(arn == task_arn && *r == role));
    }

    /// Number of credential sets held (pending ids not counted).
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of ids known but not delivered yet.
    pub fn pending_len(&self) -> usize {
        self.lock().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(id: &str, secret: &str) -> RoleCredentials {
        RoleCredentials {
            credentials_id: id.into(),
            role_arn: "arn:aws:iam::123456789012:role/app".into(),
            access_key_id: "ASIAEXAMPLE".into(),
            secret_access_key: secret.into(),
            session_token: "token-secret".into(),
            expiration: "2030-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn debug_hides_secrets_and_id() {
        let c = creds("cid-0001", "very-secret");
        let shown = format!("{c:?}");
        assert!(shown.contains("role/app"), "{shown}");
        for hidden in ["cid-0001", "ASIAEXAMPLE", "very-secret", "token-secret"] {
            assert!(!shown.contains(hidden), "{shown}");
        }
        let store = CredentialsStore::default();
        store.set("t", RoleType::TaskExecution, c);
        let shown = format!("{store:?} {:?}", store.lookup("cid-0001"));
        for hidden in ["ASIAEXAMPLE", "very-secret", "token-secret"] {
            assert!(!shown.contains(hidden), "{shown}");
        }
    }

    #[test]
    fn lookups_by_task_and_by_id() {
        let store = CredentialsStore::default();
        store.set("t", RoleType::TaskExecution, creds("x", "s"));
        assert_eq!(
            store.get("t", RoleType::TaskExecution),
            Some(creds("x", "s"))
        );
        assert_eq!(store.get("t", RoleType::TaskApplication), None);
        match store.lookup("x") {
            Lookup::Found(e) => {
                assert_eq!(e.task_arn, "t");
                assert_eq!(e.role, RoleType::TaskExecution);
                assert_eq!(e.credentials, creds("x", "s"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.lookup("y"), Lookup::Unknown);
    }

    #[test]
    fn pending_until_delivered_then_found() {
        let store = CredentialsStore::default();
        store.register_pending("t", RoleType::TaskApplication, "app-id");
        store.register_pending("t", RoleType::TaskApplication, "");
        assert_eq!(
            store.lookup("app-id"),
            Lookup::Pending {
                task_arn: "t".into(),
                role: RoleType::TaskApplication
            }
        );
        assert_eq!(store.lookup(""), Lookup::Unknown);
        assert!(store.is_empty());
        store.set("t", RoleType::TaskApplication, creds("app-id", "s"));
        assert!(matches!(store.lookup("app-id"), Lookup::Found(_)));
        assert_eq!(store.pending_len(), 0);
        // Registering again after delivery changes nothing.
        store.register_pending("t", RoleType::TaskApplication, "app-id");
        assert!(matches!(store.lookup("app-id"), Lookup::Found(_)));
    }

    #[test]
    fn refresh_keeps_old_id_and_removal_drops_every_id_of_the_role() {
        let store = CredentialsStore::default();
        store.set("t", RoleType::TaskApplication, creds("old", "s1"));
        store.set("t", RoleType::TaskApplication, creds("new", "s2"));
        store.set("t", RoleType::TaskExecution, creds("exec", "s3"));
        store.set("other", RoleType::TaskApplication, creds("o", "s4"));
        store.register_pending("t", RoleType::TaskApplication, "later");
        assert!(matches!(store.lookup("old"), Lookup::Found(_)));
        assert_eq!(
            store
                .get("t", RoleType::TaskApplication)
                .unwrap()
                .secret_access_key,
            "s2"
        );
        store.remove("t", RoleType::TaskApplication);
        for id in ["old", "new", "later"] {
            assert_eq!(store.lookup(id), Lookup::Unknown, "{id}");
        }
        assert_eq!(store.get("t", RoleType::TaskApplication), None);
        assert!(matches!(store.lookup("exec"), Lookup::Found(_)));
        assert!(matches!(store.lookup("o"), Lookup::Found(_)));
        store.remove("t", RoleType::TaskExecution);
        assert_eq!(store.lookup("exec"), Lookup::Unknown);
        assert_eq!(store.len(), 1);
    }
}
